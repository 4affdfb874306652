"""Where a re-training step's host time goes: Python's profiler over the training step `rmeeto bench --train`
times (:func:`rmeeto.bench.make_train_step`: merged student fwd + bwd under bf16 autocast, unmerged teacher fwd,
fused AdamW), for the merged and unmerged student, eager or compiled.

    PYTHONPATH=src python3 benchmarks/host_profile_train_gpu.py [--model vim_small_patch16_224] [--mode eager]
        [--batch 128] [--steps 6] [--rows 30] [--variants merged,unmerged]

Per variant: wall ms per step (median of 3 timings of ``--steps`` steps, synchronised around), the host ms of
one step issued with the GPU kept idle (``--batch 1`` shows it best), then the top functions by own time and by
cumulative time under cProfile (which slows every Python call by a similar amount: read shares, not absolute
times).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

import torch

from host_profile_gpu import host_ms as wall_ms  # ms per call of step(batch), synchronised around
from rmeeto.bench import make_train_step
from rmeeto.merge import MergeConfig


def train_arguments(ap: argparse.ArgumentParser, model: str, steps: int) -> None:
    """The options of a tool over the training step's variants (read by :func:`variant_steps`)."""
    ap.add_argument("--model", default=model)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--variants", default="merged,unmerged")


def variant_steps(a, mode: str, what: str):
    """Print the header, then yield (variant, step, batches) for each of ``a.variants`` (merged: the paper preset),
    the step warmed up by three calls; its memory is freed after the caller's turn."""
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}; {a.model} {what}, {mode}, batch {a.batch}, "
          f"bf16", flush=True)
    for variant in a.variants.split(","):
        cfg = MergeConfig.paper(a.model) if variant == "merged" else None
        step, batches = make_train_step(a.model, cfg, batch_size=a.batch, mode=mode)
        for _ in range(3):
            step(batches[0])
        yield variant, step, batches
        del step, batches
        torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser()
    train_arguments(ap, "vim_small_patch16_224", 6)
    ap.add_argument("--mode", default="eager", choices=("eager", "compile"))
    ap.add_argument("--rows", type=int, default=30)
    a = ap.parse_args()
    for variant, step, batches in variant_steps(a, a.mode, "training step"):
        ms = wall_ms(step, batches[0], a.steps, rounds=3)
        print(f"# {variant}: wall {ms:.2f} ms per step ({a.batch / ms * 1e3:.1f} img/s)", flush=True)
        prof = cProfile.Profile()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        prof.enable()
        for _ in range(a.steps):
            step(batches[0])
        prof.disable()
        host = (time.perf_counter() - t0) / a.steps * 1e3
        torch.cuda.synchronize()
        s = io.StringIO()
        st = pstats.Stats(prof, stream=s)
        print(f"#   cProfile: {st.total_calls / a.steps:.0f} Python calls per step, host {host:.1f} ms per step "
              f"under the profiler (until the last launch)")
        st.sort_stats("tottime").print_stats(a.rows)
        st.sort_stats("cumulative").print_stats(a.rows)
        print("\n".join(line for line in s.getvalue().splitlines() if line.strip())[:16000], flush=True)

if __name__ == "__main__":
    main()

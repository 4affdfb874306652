"""Does an eager forward's host time depend on the batch? Per model and variant, at each batch size: the host
time to issue one fp16 forward (``model(x)`` returning, the GPU idle before it) and the GPU time of that
forward (CUDA events), medians over ``--tries``; then where the host time goes at the largest batch (cProfile).

    PYTHONPATH=src python3 benchmarks/host_issue_gpu.py [--models vim_tiny_patch16_224] [--batches 1,128]

A forward whose issue time exceeds its GPU time is host-bound when called back to back (eager ``rmeeto bench``).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import time

import torch

import rmeeto
from rmeeto.merge import MergeConfig


def issue_and_gpu_times(model, x, tries: int) -> tuple[list, list]:
    """Per try: the host ms to issue ``model(x)`` with the GPU idle before it, and that forward's GPU ms (CUDA
    events)."""
    issue, gpu = [], []
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(tries):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        start.record()
        model(x)
        end.record()
        issue.append((time.perf_counter() - t0) * 1e3)
        end.synchronize()
        gpu.append(start.elapsed_time(end))
    return issue, gpu


def issue_and_gpu_ms(model, x, tries: int):
    issue, gpu = issue_and_gpu_times(model, x, tries)
    return statistics.median(issue), statistics.median(gpu)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="vim_tiny_patch16_224")
    ap.add_argument("--variants", default="unmerged,merged")
    ap.add_argument("--batches", default="1,128")
    ap.add_argument("--tries", type=int, default=30)
    ap.add_argument("--rows", type=int, default=14)
    a = ap.parse_args()
    batches = [int(b) for b in a.batches.split(",")]
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}; eager fp16, no_grad; ms, medians")
    for name in a.models.split(","):
        for variant in a.variants.split(","):
            m = rmeeto.create_model(name).cuda().eval().half()
            if variant == "merged":
                rmeeto.apply_merge(m, MergeConfig.paper(name))
            with torch.no_grad():
                for b in batches:
                    x = torch.randn(b, 3, 224, 224, device="cuda").half()
                    for _ in range(5):
                        m(x)
                    issue, gpu = issue_and_gpu_ms(m, x, a.tries)
                    print(f"{name} {variant} batch {b}: issue {issue:.2f} ms, GPU {gpu:.2f} ms"
                          f" ({'host' if issue > gpu else 'GPU'}-bound back to back)")
                prof = cProfile.Profile()
                torch.cuda.synchronize()
                prof.enable()
                for _ in range(10):
                    m(x)
                    torch.cuda.synchronize()
                prof.disable()
                s = io.StringIO()
                pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(a.rows)
                print(f"#   cProfile at batch {batches[-1]}, 10 forwards (each synchronised):")
                print("\n".join(line for line in s.getvalue().splitlines()[4:] if line.strip()))


if __name__ == "__main__":
    main()

"""Where an eager forward's host time goes: Python's profiler over eager fp16 forwards at batch 1 (the GPU idles,
so wall time is the host's), for unmerged and merged (paper config) models.

    PYTHONPATH=src python3 benchmarks/host_profile_gpu.py [--models vim_tiny_patch16_224] [--calls 40] [--rows 30]
        [--compile] [--variants unmerged,merged]

Per model and variant: host ms per forward without the profiler (median of 5 timings of ``--calls`` forwards),
then the top functions by own time under cProfile (which slows every Python call by a similar amount, so read
its shares, not its absolute times). ``--compile``: of ``torch.compile(model)`` (Inductor's default mode) instead.
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


def host_ms(model, x, calls: int, rounds: int = 5) -> float:
    """Median over ``rounds`` of the ms per call of ``calls`` calls ``model(x)``, the GPU synchronised around."""
    times = []
    for _ in range(rounds):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            model(x)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) / calls * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="vim_tiny_patch16_224")
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--rows", type=int, default=30)
    ap.add_argument("--compile", action="store_true", help="profile torch.compile(model) instead")
    ap.add_argument("--variants", default="unmerged,merged")
    a = ap.parse_args()
    how = "compiled" if a.compile else "eager"
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}; {how} fp16, batch 1, no_grad")
    x = torch.randn(1, 3, 224, 224, device="cuda").half()
    for name in a.models.split(","):
        for variant in a.variants.split(","):
            m = rmeeto.create_model(name).cuda().eval().half()
            if variant == "merged":
                rmeeto.apply_merge(m, MergeConfig.paper(name))
            if a.compile:
                torch._dynamo.reset()
                m = torch.compile(m)
            with torch.no_grad():
                for _ in range(5):
                    m(x)
                ms = host_ms(m, x, a.calls)
                print(f"# {name} {variant}: host {ms:.3f} ms per forward at batch 1", flush=True)
                prof = cProfile.Profile()
                torch.cuda.synchronize()
                prof.enable()
                for _ in range(a.calls):
                    m(x)
                torch.cuda.synchronize()
                prof.disable()
            s = io.StringIO()
            st = pstats.Stats(prof, stream=s)
            print(f"#   cProfile: {st.total_calls / a.calls:.0f} Python calls per forward, "
                  f"{st.total_tt / a.calls * 1e3:.2f} ms per forward under the profiler")
            st.sort_stats("tottime").print_stats(a.rows)
            print("\n".join(line for line in s.getvalue().splitlines() if line.strip())[:12000], flush=True)
            del m
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

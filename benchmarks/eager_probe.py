"""Is an eager Vim forward's speed steady within one process? Times eager fp16 inference of the unmerged and
merged (paper config) model in rounds, with the host's load average, and again with Python's garbage
collector off, to tell host contention and collector pauses from the model's own cost.

    PYTHONPATH=src python benchmarks/eager_probe.py [--models vim_tiny_patch16_224,vim_small_patch16_224]
        [--rounds 3] [--calls 20] [--batch 128]

Session 10 (H200) saw `rmeeto bench` time merged eager Vim-S at 22.8 ms per batch where the profiler, later in
the same device call, timed the same forward of Vim-Ti at 14.4 ms and session 8 had 13.2 ms for Vim-S.
"""

import argparse
import gc
import os
import statistics

import torch

import rmeeto
from rmeeto.fast import accelerate
from rmeeto.merge import MergeConfig
from rmeeto.timing import Protocol, measure


def rounds(fn, x, n_rounds, calls):
    """ms per call of each round: 5 untimed calls, then ``calls`` calls between one pair of CUDA events."""
    protocol = Protocol(warmup=5, repeats=calls, per_repeat=False)
    return [measure(fn, [x], batch_size=x.shape[0], device=x.device, protocol=protocol).median_ms
            for _ in range(n_rounds)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="vim_tiny_patch16_224,vim_small_patch16_224")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--batch", type=int, default=128)
    a = ap.parse_args()
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, {os.cpu_count()} CPUs", flush=True)
    for name in a.models.split(","):
        x = torch.randn(a.batch, 3, 224, 224, device="cuda").half()
        for variant in ("unmerged", "merged"):
            torch.manual_seed(0)
            model = rmeeto.create_model(name).cuda().eval()
            if variant == "merged":
                rmeeto.apply_merge(model, MergeConfig.paper(name))
            fn = accelerate(model.half(), "eager")
            with torch.no_grad():
                fn(x)
                torch.cuda.synchronize()
                load = open("/proc/loadavg").read().split()[:3]
                on = rounds(fn, x, a.rounds, a.calls)
                gc.collect()
                gc.disable()
                try:
                    off = rounds(fn, x, a.rounds, a.calls)
                finally:
                    gc.enable()
            print(f"{name:<24} {variant:<8} eager ms per batch, rounds: gc on "
                  + " ".join(f"{t:6.2f}" for t in on) + " | gc off " + " ".join(f"{t:6.2f}" for t in off)
                  + f" | img/s {a.batch * 1e3 / statistics.median(on):,.0f} / {a.batch * 1e3 / statistics.median(off):,.0f}"
                  + f" | load {' '.join(load)}, gc objects {len(gc.get_objects()):,}", flush=True)
            del model, fn
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

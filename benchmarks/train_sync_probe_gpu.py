"""Where an eager re-training step makes the host wait for the GPU: the step `rmeeto bench --train` times
(:func:`rmeeto.bench.make_train_step`, eager) run under ``torch.cuda.set_sync_debug_mode("warn")``, each call site
that synchronises counted with its last rmeeto frames; and, per variant, the wall ms of a step against the host ms
to issue it (the step returning before the GPU is done), so a host-bound step shows as host ~ wall.

    PYTHONPATH=src python3 benchmarks/train_sync_probe_gpu.py [--model vim_tiny_patch16_224] [--batch 128]
        [--steps 4] [--variants merged,unmerged]

Warnings raised on the autograd engine's threads (the backward) may reach stderr as C++ warnings instead of Python
ones: keep stderr in the log.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time
import traceback
import warnings

import torch

from rmeeto.bench import make_train_step
from rmeeto.merge import MergeConfig


def _site(message) -> tuple:
    frames = [f for f in traceback.extract_stack()[:-2] if "rmeeto" in f.filename or "benchmarks" in f.filename]
    where = tuple(f"{f.filename.rsplit('src/', 1)[-1]}:{f.lineno} {f.name}" for f in frames[-4:])
    return str(message).splitlines()[0][:120], where


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vim_tiny_patch16_224")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--variants", default="merged,unmerged")
    a = ap.parse_args()
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}; {a.model} eager training step, "
          f"batch {a.batch}, bf16", flush=True)
    for variant in a.variants.split(","):
        cfg = MergeConfig.paper(a.model) if variant == "merged" else None
        step, batches = make_train_step(a.model, cfg, batch_size=a.batch, mode="eager")
        for _ in range(3):
            step(batches[0])
        walls, hosts = [], []
        for _ in range(5):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            step(batches[0])
            hosts.append((time.perf_counter() - t0) * 1e3)
            torch.cuda.synchronize()
            walls.append((time.perf_counter() - t0) * 1e3)
        print(f"{variant}: wall {statistics.median(walls):.1f} ms per step, host {statistics.median(hosts):.1f} ms "
              f"to issue it (walls {', '.join(f'{w:.1f}' for w in walls)})", flush=True)
        sites: collections.Counter = collections.Counter()
        torch.cuda.synchronize()
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = lambda message, *args, **kw: sites.update([_site(message)])
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for _ in range(a.steps):
                    step(batches[0])
                torch.cuda.synchronize()
            finally:
                torch.cuda.set_sync_debug_mode(0)
        print(f"{variant}: {sum(sites.values()) / a.steps:.1f} synchronising calls per step, {len(sites)} sites",
              flush=True)
        for (message, where), n in sites.most_common(20):
            print(f"  {n / a.steps:5.1f} per step  {message}\n      " + "\n      ".join(where), flush=True)
        del step, batches
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

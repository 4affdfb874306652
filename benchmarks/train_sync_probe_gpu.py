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

from host_profile_train_gpu import train_arguments, variant_steps


def _site(message) -> tuple:
    frames = [f for f in traceback.extract_stack()[:-2] if "rmeeto" in f.filename or "benchmarks" in f.filename]
    where = tuple(f"{f.filename.rsplit('src/', 1)[-1]}:{f.lineno} {f.name}" for f in frames[-4:])
    return str(message).splitlines()[0][:120], where


def main():
    ap = argparse.ArgumentParser()
    train_arguments(ap, "vim_tiny_patch16_224", 4)
    a = ap.parse_args()
    for variant, step, batches in variant_steps(a, "eager", "training step"):
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


if __name__ == "__main__":
    main()

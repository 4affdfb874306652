"""Why an eager forward is sometimes host-bound on the device machine: does it synchronise, and how long does the
host take to issue it, one by one and back to back?

    PYTHONPATH=src python3 benchmarks/eager_jitter_gpu.py [--models vim_tiny_patch16_224,vim_small_patch16_224]
        [--tries 60] [--batch 128]

Per model and variant (fp16, eval, no_grad, paper merge for "merged"):
* syncs: forwards run under ``torch.cuda.set_sync_debug_mode("warn")``; the synchronising calls it reports;
* alone: the host time to issue one forward with the GPU idle before it (synchronised between tries), and the
  GPU time of that forward (CUDA events);
* back to back: the host time of each of ``--tries`` forwards issued without synchronising (a forward that waits
  for the GPU, for a sync or a full launch queue, shows as a long one) and the GPU time per forward over them.
p10 / median / p90 / max of each. The host's load (``/proc/loadavg``) and the busiest other processes are printed
first and last: the device machine is shared, so a slow round may be another process's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
import warnings

import torch

import rmeeto
from host_issue_gpu import issue_and_gpu_times  # (benchmarks/ is the script's folder)
from rmeeto.merge import MergeConfig


def spread(xs):
    xs = sorted(xs)
    q = lambda p: xs[min(len(xs) - 1, int(p * len(xs)))]  # noqa: E731
    return f"p10 {q(0.1):6.2f}  median {statistics.median(xs):6.2f}  p90 {q(0.9):6.2f}  max {xs[-1]:6.2f} ms"


def host_state(tag):
    print(f"# {tag}: loadavg {open('/proc/loadavg').read().strip()}, {os.cpu_count()} CPUs")
    try:
        out = subprocess.run(["ps", "-eo", "pcpu,pid,comm", "--sort=-pcpu"], capture_output=True, text=True,
                             timeout=10).stdout.splitlines()[:6]
        print("#   " + " | ".join(line.strip() for line in out))
    except Exception as exc:  # ps missing: say so, go on
        print(f"#   ps: {exc}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="vim_tiny_patch16_224,vim_small_patch16_224")
    ap.add_argument("--variants", default="unmerged,merged")
    ap.add_argument("--tries", type=int, default=60)
    ap.add_argument("--batch", type=int, default=128)
    a = ap.parse_args()
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}; eager fp16, no_grad, batch {a.batch}")
    host_state("start")
    for name in a.models.split(","):
        for variant in a.variants.split(","):
            m = rmeeto.create_model(name).cuda().eval().half()
            if variant == "merged":
                rmeeto.apply_merge(m, MergeConfig.paper(name))
            x = torch.randn(a.batch, 3, 224, 224, device="cuda").half()
            with torch.no_grad():
                for _ in range(5):
                    m(x)
                torch.cuda.synchronize()
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    torch.cuda.set_sync_debug_mode("warn")
                    try:
                        for _ in range(3):
                            m(x)
                    finally:
                        torch.cuda.set_sync_debug_mode("default")
                syncs = sorted({str(w.message).splitlines()[0][:120] for w in caught
                                if "synchroniz" in str(w.message).lower()})
                torch.cuda.synchronize()
                issue, gpu = issue_and_gpu_times(m, x, a.tries)
                torch.cuda.synchronize()
                b2b = []
                s2, e2 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s2.record()
                for _ in range(a.tries):
                    t0 = time.perf_counter()
                    m(x)
                    b2b.append((time.perf_counter() - t0) * 1e3)
                e2.record()
                torch.cuda.synchronize()
            print(f"{name} {variant}: {len(syncs)} synchronising call(s) in 3 forwards" +
                  "".join(f"\n    sync: {s}" for s in syncs))
            print(f"  alone, issue : {spread(issue)}")
            print(f"  alone, GPU   : {spread(gpu)}")
            print(f"  back to back : {spread(b2b)}; GPU {s2.elapsed_time(e2) / a.tries:.2f} ms per forward")
            del m
            torch.cuda.empty_cache()
    host_state("end")


if __name__ == "__main__":
    main()

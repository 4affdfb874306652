"""Where a graphed forward's wall time is not kernel time: the idle gap before each kernel of one replay, from a
torch.profiler trace (kernels, copies and fills of the graph, ordered by start), summed by the kernel that waits.
A merged model's gaps beyond its token share lower its ratio as much as kernel time does.

    PYTHONPATH=src python3 benchmarks/gaps_gpu.py [--models vim_tiny_patch16_224,vim_small_patch16_224]
        [--batch 128] [--calls 8] [--rows 14] [--trace-dir DIR]

Per model and variant (unmerged, paper-merged), fp16, ``rmeeto.fast.accelerate(model, "cudagraph")``: kernel us
and gap us per forward (median over ``--calls`` replays, each replay's first kernel's gap left out: it waits for
the host), launches per forward, then the kernels with the most gap before them (sum per forward, count, median
gap) and the largest single gaps with the kernel before and after.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import tempfile

import torch
from torch.profiler import ProfilerActivity, profile

import rmeeto
from rmeeto.fast import accelerate

GPU_CATS = ("kernel", "gpu_memcpy", "gpu_memset")


def short(name: str) -> str:
    return name if len(name) <= 60 else name[:57] + "..."


def trace_events(fn, x, calls: int, trace_dir: str | None, tag: str) -> list[tuple[float, float, str]]:
    """(start us, end us, name) of every GPU work item of ``calls`` replays, in start order."""
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn(x)
        torch.cuda.synchronize()
    path = os.path.join(trace_dir or tempfile.mkdtemp(), f"{tag}.json")
    prof.export_chrome_trace(path)
    with open(path) as f:
        trace = json.load(f)
    if not trace_dir:
        os.remove(path)
    evs = [(float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0)), e["name"])
           for e in trace.get("traceEvents", []) if e.get("ph") == "X" and e.get("cat") in GPU_CATS]
    evs.sort()
    return evs


def split_calls(evs, calls: int):
    """The events cut into ``calls`` forwards of equal length (a graph replays the same nodes each time)."""
    if not evs or len(evs) % calls:
        raise SystemExit(f"{len(evs)} GPU events do not split into {calls} equal forwards")
    n = len(evs) // calls
    return [evs[i * n:(i + 1) * n] for i in range(calls)]


def analyse(evs, calls: int, rows: int, label: str) -> dict:
    forwards = split_calls(evs, calls)
    kern, gaps, span = [], [], []
    before = collections.defaultdict(list)  # next kernel -> its gaps (one per occurrence and replay)
    singles = []
    for fw in forwards:
        kern.append(sum(e - s for s, e, _ in fw))
        span.append(fw[-1][1] - fw[0][0])
        g = 0.0
        for (s0, e0, n0), (s1, _e1, n1) in zip(fw, fw[1:]):
            gap = max(0.0, s1 - e0)
            g += gap
            before[n1].append(gap)
            singles.append((gap, n0, n1))
        gaps.append(g)
    n = len(forwards[0])
    out = {"launches": n, "kernel_us": statistics.median(kern), "gap_us": statistics.median(gaps),
           "span_us": statistics.median(span)}
    print(f"# {label}: {n} launches, span {out['span_us']:.1f} us = kernels {out['kernel_us']:.1f} + gaps "
          f"{out['gap_us']:.1f} (median of {calls} replays; the first kernel's wait for the host left out)",
          flush=True)
    table = sorted(before.items(), key=lambda kv: -sum(kv[1]))
    print(f"  {'gap before kernel':60s} {'us/fwd':>8s} {'count':>6s} {'median':>7s} {'max':>7s}")
    for name, gs in table[:rows]:
        print(f"  {short(name):60s} {sum(gs) / calls:8.1f} {len(gs) // calls:6d} {statistics.median(gs):7.2f} "
              f"{max(gs):7.2f}")
    singles.sort(reverse=True)
    print("  largest gaps: " + "; ".join(f"{g:.1f} us {short(a)[:28]} -> {short(b)[:28]}"
                                        for g, a, b in singles[:6]))
    out["before"] = {k: sum(v) / calls for k, v in before.items()}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="vim_tiny_patch16_224,vim_small_patch16_224")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--calls", type=int, default=8)
    ap.add_argument("--rows", type=int, default=14)
    ap.add_argument("--trace-dir", default=None, help="keep the chrome traces here")
    ap.add_argument("--json", default=None, help="write the summaries here")
    a = ap.parse_args()
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    results = {}
    for name in a.models.split(","):
        for merged in (False, True):
            model = rmeeto.create_model(name).cuda().half().eval()
            if merged:
                rmeeto.apply_merge(model, rmeeto.MergeConfig.paper(name))
            fn = accelerate(model, "cudagraph")
            x = torch.randn(a.batch, 3, 224, 224, device="cuda", dtype=torch.half)
            for _ in range(3):
                fn(x)
            tag = f"{name}_{'merged' if merged else 'unmerged'}"
            results[tag] = analyse(trace_events(fn, x, a.calls, a.trace_dir, tag), a.calls, a.rows, tag)
            del fn, model
            torch.cuda.empty_cache()
    for name in a.models.split(","):
        u, m = results[f"{name}_unmerged"], results[f"{name}_merged"]
        print(f"# {name}: gaps unmerged {u['gap_us']:.1f} us, merged {m['gap_us']:.1f} us per forward; kernels "
              f"{u['kernel_us']:.1f} / {m['kernel_us']:.1f} (kernel ratio {u['kernel_us'] / m['kernel_us']:.4f}, "
              f"span ratio {u['span_us'] / m['span_us']:.4f})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

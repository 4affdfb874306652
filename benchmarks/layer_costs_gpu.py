"""Where a graphed merged forward's time goes, layer by layer: each kind of kernel's time at each layer of the
unmerged and the paper-merged model (torch.profiler trace of graph replays, median over replays), the token count
the layer's mixer takes, and per kind a least-squares line t = a + b * L through the merged model's layers and
the unmerged model's. ``a`` is a kind's fixed cost per call: both models pay it at every layer, so it lowers the
merged / unmerged ratio; ``b * L`` scales with the tokens and leaves the ratio where the token share puts it.

    PYTHONPATH=src python3 benchmarks/layer_costs_gpu.py [--models vim_tiny_patch16_224] [--batch 128]
        [--calls 8] [--layers]

Kinds: norm (add + norm, merge + norm), match, in_proj (the first GEMM of each layer: TMA tiles or cuBLAS, with the
memset cuBLAS adds before it), conv, proj (x_proj + dt_proj), scan, out_proj, and "fixed" (embedding, copies, the
final norm and head). Models of random weights (as ``rmeeto bench``), fp16, ``accelerate(model, "cudagraph")``.
"""

from __future__ import annotations

import argparse
import collections
import re
import statistics

import torch

import rmeeto
from gaps_gpu import split_calls, trace_events
from rmeeto.fast import accelerate

KINDS = (("match", r"_match_kernel"), ("norm", r"_add_norm_fwd|_merge_norm_kernel"), ("conv", r"_conv_silu_fwd"),
         ("proj", r"_bidir_proj_kernel"), ("scan", r"_scan_bidir_fwd_kernel"), ("out_proj", r"_sum_out_proj"),
         ("memset", r"[Mm]emset"), ("gemm", r"_tma_gemm_kernel|nvjet|gemm|cutlass|sm90_xmma"))
ORDER = ("norm", "match", "in_proj", "conv", "proj", "scan", "out_proj")


def kind_of(name: str) -> str:
    return next((k for k, pat in KINDS if re.search(pat, name)), "fixed")


def per_layer(forward, depth: int) -> dict:
    """{(kind, layer): us} of one replay's events: the i-th norm is layer i's (the 25th the final norm), the i-th
    GEMM layer i's in_proj (with the memset just before it; later GEMMs are the head), a layer's match the one
    before its norm; the other kinds one per layer in order."""
    out = collections.defaultdict(float)
    count = collections.Counter()
    pending_memset = 0.0
    norm_layer = -1
    for s, e, name in forward:
        k = kind_of(name)
        us = e - s
        if k == "memset":
            pending_memset += us
            continue
        if k == "gemm":
            k = "in_proj" if count["in_proj"] < depth else "fixed"
        if k == "match":
            out[("match", count["norm"])] += us
            continue
        if k == "norm":
            norm_layer = count["norm"]
            if norm_layer >= depth:
                k = "fixed"
        i = count[k]
        count[k] += 1
        if k == "in_proj":  # cuBLAS's memset before its GEMM is the GEMM's; any other memset is fixed work
            us += pending_memset
        else:
            out[("fixed", 0)] += pending_memset
        pending_memset = 0.0
        out[("fixed", 0) if k == "fixed" else (k, i)] += us
    out[("fixed", 0)] += pending_memset
    return out


def fit(points):
    """Least-squares (a, b) of t = a + b * L over (L, t) points."""
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    b = sum((p[0] - mx) * (p[1] - my) for p in points) / sxx if sxx else 0.0
    return my - b * mx, b


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="vim_tiny_patch16_224")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--calls", type=int, default=8)
    ap.add_argument("--layers", action="store_true", help="print every layer's times")
    a = ap.parse_args()
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    for name in a.models.split(","):
        times, tokens = {}, {}
        for merged in (False, True):
            model = rmeeto.create_model(name).cuda().half().eval()
            depth = len(model.layers)
            cfg = rmeeto.MergeConfig.paper(name)
            sched = cfg.schedule(197, depth)  # 224 px, patch 16, a class token
            tokens[merged] = [s.tokens_out for s in sched] if merged else [sched[0].tokens_in] * depth
            if merged:
                rmeeto.apply_merge(model, cfg)
            fn = accelerate(model, "cudagraph")
            x = torch.randn(a.batch, 3, 224, 224, device="cuda", dtype=torch.half)
            for _ in range(3):
                fn(x)
            forwards = split_calls(trace_events(fn, x, a.calls, None, f"{name}_{merged}"), a.calls)
            layers = [per_layer(fw, depth) for fw in forwards]
            keys = set().union(*layers)
            times[merged] = {k: statistics.median(lay.get(k, 0.0) for lay in layers) for k in keys}
            span = statistics.median(fw[-1][1] - fw[0][0] for fw in forwards)
            print(f"# {name} {'merged' if merged else 'unmerged'}: {len(forwards[0])} launches, span {span:.1f} us, "
                  f"kernels {sum(times[merged].values()):.1f} us", flush=True)
            del fn, model
            torch.cuda.empty_cache()
        un, me = times[False], times[True]
        share = sum(tokens[True]) / sum(tokens[False])
        print(f"# {name}: token share {share:.4f} (ideal ratio {1 / share:.4f}); us per forward")
        print(f"  {'kind':9s} {'unmerged':>9s} {'merged':>9s} {'share':>9s} {'excess':>8s} {'a (fixed)':>10s} "
              f"{'b*197':>8s}")
        tot_ex = 0.0
        for k in ORDER + ("fixed",):
            su = sum(v for (kk, _), v in un.items() if kk == k)
            sm = sum(v for (kk, _), v in me.items() if kk == k)
            if k == "fixed":
                print(f"  {k:9s} {su:9.1f} {sm:9.1f} {su:9.1f} {sm - su:+8.1f}")
                tot_ex += sm - su
                continue
            ex = sm - su * share
            tot_ex += ex
            pts = [(tokens[True][i], me.get((k, i), 0.0)) for i in range(len(tokens[True])) if (k, i) in me]
            pts += [(197, un[(k, i)]) for i in range(len(tokens[False])) if (k, i) in un]
            a_, b_ = fit(pts) if k not in ("match",) and len({p[0] for p in pts}) > 1 else (0.0, 0.0)
            print(f"  {k:9s} {su:9.1f} {sm:9.1f} {su * share:9.1f} {ex:+8.1f} {a_:10.2f} {b_ * 197:8.2f}")
        print(f"  excess over the token share: {tot_ex:+.1f} us per forward")
        if a.layers:
            print("  layer  L   " + " ".join(f"{k:>15s}" for k in ORDER) + "   (merged / unmerged us)")
            for i, L in enumerate(tokens[True]):
                print(f"  {i:5d} {L:4d} " + " ".join(
                    f"{me.get((k, i), 0.0):7.1f}/{un.get((k, i), 0.0):7.1f}" for k in ORDER))


if __name__ == "__main__":
    main()

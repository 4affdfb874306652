"""Time the fused matching + merge (rmeeto.ops.triton.merge) at the shapes of one merging layer of Vim-S
(batch 128, 197 tokens, r=11, class token in the middle) and of VideoMamba-S f8 (batch 16, 1569 tokens, r=88,
class token first; ``--video-schedule`` runs every merging layer of its r=88 schedule, 1569 -> 689 tokens).

Per shape, all in fp16 metric / hidden with a float32 residual (as the models run):
- per kernel: mean GPU time per call from torch.profiler (the kernels by name, so old and new code compare);
- graphed: one ``match_merge_fused`` captured in a CUDA graph, replayed (GPU time only), median of CUDA-event
  timings; the same for ``match_plan`` alone;
- eager: median CUDA-event time per call of ``match_merge_fused`` called in a loop (host launch cost
  included: what a model pays without graphs);
- how often the plan equals PyTorch's ``bipartite_match`` plan (per batch element; fp16 scores may break
  near-ties differently, so a little below 100% is expected, far below is a bug).

It calls only ``match_plan`` and ``match_merge_fused`` by name, so it runs against older checkouts too
(before/after: run it in both with PYTHONPATH pointing at each ``src``):

    PYTHONPATH=src python benchmarks/bench_merge_gpu.py [--video-schedule] [--partner-tiles] [--match-tiles]
        [--only-sweeps] [--reps 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from rmeeto.merge import bipartite_match, plan_cls_index
from rmeeto.ops.triton import merge as mt

SHAPES = {  # name: (batch, tokens, channels, class-token index, merged tokens)
    "vim_s": (128, 197, 384, 98, 11),
    "videomamba_s_f8": (16, 1569, 384, 0, 88),
}


def _event_ms(fn, reps: int, inner: int) -> float:
    """Median over ``reps`` of the CUDA-event time of ``inner`` back-to-back calls, per call (ms)."""
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / inner)
    return statistics.median(times)


def _graphed(fn):
    """``fn`` captured in a CUDA graph (after a warm-up on a side stream); returns the replay callable."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def _kernel_us(fn, calls: int = 20) -> dict[str, float]:
    """Mean GPU time per call (us) of every CUDA kernel ``fn`` launches, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    out = {}
    for evt in prof.key_averages():
        total = getattr(evt, "device_time_total", None)
        if total is None:
            total = getattr(evt, "cuda_time_total", 0.0)
        if total > 0 and evt.count >= calls:
            out[evt.key] = total / calls
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def bench_layer(batch, L, C, cls, r, with_size, reps, ordered=True):
    torch.manual_seed(0)
    hidden = torch.randn(batch, L, C, device="cuda", dtype=torch.float16)
    residual = torch.randn(batch, L, C, device="cuda", dtype=torch.float32)
    size = torch.randint(1, 4, (batch, L, 1), device="cuda").float() if with_size else None
    r = min(r, (L - 1) // 2)
    new_cls = plan_cls_index(cls, L, r, ordered)

    def merge():
        return mt.match_merge_fused(hidden, residual, size, hidden, cls, r, new_cls, ordered)

    def plan():
        return mt.match_plan(hidden, cls, r, new_cls, ordered)

    dest = plan()[0]
    ref = mt.destination_map(bipartite_match(hidden, cls, r, ordered=ordered), L, ordered)
    same = (ref == dest).all(-1).float().mean().item()
    res = {
        "batch": batch, "tokens": L, "channels": C, "cls": cls, "r": r, "sizes": with_size,
        "kernels_us": _kernel_us(merge),
        "graphed_match_merge_us": 1e3 * _event_ms(_graphed(merge), reps, 10),
        "graphed_match_plan_us": 1e3 * _event_ms(_graphed(plan), reps, 10),
        "eager_match_merge_us": 1e3 * _event_ms(merge, reps, 10),
        "plan_equals_pytorch": same,
    }
    return res


def sweep_partner_tiles(reps):
    """Graphed match_plan time for every best-partner tiling in ``PARTNER_TILES`` at each shape (first layer);
    the plan must not change with the tiling. Returns {shape: fastest tiles}; leaves PARTNER_CONFIG as found."""
    if not hasattr(mt, "PARTNER_TILES"):
        print("--partner-tiles: this checkout has no PARTNER_TILES table; skipped")
        return {}
    found = dict(mt.PARTNER_CONFIG)
    best = {}
    for name, (batch, L, C, cls, r) in SHAPES.items():
        key = "long" if L // 2 > mt._LONG_SOURCES else "short"
        hidden = torch.randn(batch, L, C, device="cuda", dtype=torch.float16)
        new_cls = plan_cls_index(cls, L, r, True)
        ref = None
        times = {}
        for tiles in mt.PARTNER_TILES:
            mt.PARTNER_CONFIG[key] = tiles
            plan = lambda: mt.match_plan(hidden, cls, r, new_cls, True)  # noqa: E731
            dest = plan()[0]
            ref = dest if ref is None else ref
            times[tiles] = 1e3 * _event_ms(_graphed(plan), reps, 10)
            print(f"{name} ({key}) partner tiles {tiles}: match_plan graphed {times[tiles]:.1f} us"
                  f"{'' if torch.equal(dest, ref) else '  PLAN DIFFERS FROM THE FIRST TILING'}")
        best[name] = min(times, key=times.get)
        print(f"{name}: fastest tiles {best[name]} -> set PARTNER_CONFIG[{key!r}] in rmeeto/ops/triton/merge.py")
        mt.PARTNER_CONFIG.update(found)
    return best


MATCH_SHAPES = {  # Vim-Ti / S / B merging layers at batch 128: the first (197 tokens) and the last (87 or 147)
    "vim_ti_first": (128, 197, 192, 98, 5), "vim_ti_last": (128, 147, 192, 73, 5),
    "vim_s_first": (128, 197, 384, 98, 11), "vim_s_last": (128, 87, 384, 43, 11),
    "vim_b_first": (128, 197, 768, 98, 11), "vim_b_last": (128, 87, 768, 43, 11),
}


def sweep_match_tiles(reps, tiles_list=None, as_configured=False):
    """Graphed match_plan and match_merge_fused, the two-kernel path (best partner, plan) against the one-launch
    match kernel in each tiling of ``MATCH_TILES``, at Vim-Ti / S / B merging-layer shapes; every path must
    write the two-kernel path's destination map. ``tiles_list``: these tilings instead of MATCH_TILES;
    ``as_configured``: each tiling with MATCH_CONFIG's one_j / dot_unroll only. Leaves MATCH_CONFIG as found."""
    if not hasattr(mt, "MATCH_TILES"):
        print("--match-tiles: this checkout has no one-launch match kernel; skipped")
        return {}
    found = dict(mt.MATCH_CONFIG)
    best = {}
    for name, (batch, L, C, cls, r) in MATCH_SHAPES.items():
        hidden = torch.randn(batch, L, C, device="cuda", dtype=torch.float16)
        residual = torch.randn(batch, L, C, device="cuda", dtype=torch.float32)
        new_cls = plan_cls_index(cls, L, r, True)
        plan = lambda: mt.match_plan(hidden, cls, r, new_cls, True)  # noqa: E731
        merge = lambda: mt.match_merge_fused(hidden, residual, None, hidden, cls, r, new_cls, True)  # noqa: E731
        times = {}
        ref = None
        variants = [(None, False, 1)] + [(tiles, one_j, dot_unroll) for tiles in (tiles_list or mt.MATCH_TILES)
                                         for one_j in (False, True) for dot_unroll in (1, 2)
                                         if "one_j" in found or (not one_j and dot_unroll == 1)]
        if as_configured:
            variants = [(None, False, 1)] + [(tiles, found.get("one_j"), found.get("dot_unroll"))
                                             for tiles in (tiles_list or mt.MATCH_TILES)]
        for key in variants:
            tiles, one_j, dot_unroll = key
            mt.MATCH_CONFIG.update(found, fused=tiles is not None)
            if tiles is not None:
                mt.MATCH_CONFIG.update(small=tiles, large=tiles, wide=tiles)
            if "one_j" in found:
                mt.MATCH_CONFIG.update(one_j=one_j, dot_unroll=dot_unroll)
            dest = plan()[0]
            ref = dest if ref is None else ref
            times[key] = (1e3 * _event_ms(_graphed(plan), reps, 10), 1e3 * _event_ms(_graphed(merge), reps, 10))
            label = "two kernels" if tiles is None else f"one launch {tiles} one_j={one_j} dot_unroll={dot_unroll}"
            print(f"{name} L={L} C={C}: {label}: match_plan graphed {times[key][0]:.1f} us, match+merge "
                  f"{times[key][1]:.1f} us{'' if torch.equal(dest, ref) else '  PLAN DIFFERS FROM TWO KERNELS'}",
                  flush=True)
        best[name] = min(times, key=lambda k: times[k][0])
        print(f"{name}: fastest {best[name] or 'two kernels'}")
        mt.MATCH_CONFIG.update(found)
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--video-schedule", action="store_true",
                    help="every merging layer of VideoMamba-S f8 at r=88 (1569, 1481, ..., 689 tokens)")
    ap.add_argument("--partner-tiles", action="store_true",
                    help="also time every best-partner tiling (rmeeto.ops.triton.merge.PARTNER_TILES)")
    ap.add_argument("--match-tiles", action="store_true",
                    help="also time the one-launch match kernel in every tiling (MATCH_TILES) against two kernels")
    ap.add_argument("--tiles", default=None,
                    help="--match-tiles over these tilings instead, e.g. '128,128,32,16,2,64;64,64,32,8,4,64', "
                         "each with MATCH_CONFIG's one_j / dot_unroll only")
    ap.add_argument("--only-sweeps", action="store_true", help="skip the default shapes, run only the sweeps asked")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, module {mt.__file__}")
    rows = []
    for name, (batch, L, C, cls, r) in ({} if args.only_sweeps else SHAPES).items():
        lengths = [L - r * k for k in range(11)] if name.startswith("video") and args.video_schedule else [L]
        for k, n in enumerate(lengths):
            res = bench_layer(batch, n, C, cls, r, with_size=k > 0, reps=args.reps)
            res["shape"] = name
            rows.append(res)
            kern = ", ".join(f"{key} {us:.1f}" for key, us in res["kernels_us"].items())
            print(f"{name} L={n} batch={batch} r={res['r']}: "
                  f"graphed match+merge {res['graphed_match_merge_us']:.1f} us "
                  f"(plan only {res['graphed_match_plan_us']:.1f}), "
                  f"eager {res['eager_match_merge_us']:.1f} us/call, "
                  f"plan == PyTorch on {res['plan_equals_pytorch']:.0%}")
            print(f"    kernels (us/call): {kern}")
    if args.video_schedule:
        total = sum(r_["graphed_match_merge_us"] for r_ in rows if r_["shape"].startswith("video"))
        print(f"videomamba_s_f8 whole schedule (11 merging layers), graphed: {total:.1f} us per forward")
    if args.partner_tiles:
        sweep_partner_tiles(args.reps)
    if args.match_tiles:
        tiles = [tuple(int(v) for v in t.split(",")) for t in args.tiles.split(";")] if args.tiles else None
        sweep_match_tiles(args.reps, tiles, as_configured=tiles is not None)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()

"""A batch's forward as parts on concurrent streams inside one CUDA graph: does overlapping two halves' kernels
(one half's latency-bound matching, norms and small GEMMs beside the other half's scan) pay, and for which model?

    PYTHONPATH=src python3 benchmarks/stream_split_gpu.py [--models vim_tiny_patch16_224] [--batch 128]
        [--variants one,seq2,par2,prio2] [--rounds 5] [--repeats 60]

Variants, each one CUDA graph of the whole batch (random weights, fp16, as ``rmeeto bench``):
  one    the batch in one forward (what ``accelerate(model, "cudagraph")`` captures);
  seqN   N forwards of batch / N, one after another on one stream (the part size's own cost);
  parN   N forwards of batch / N on N streams forked from the capture stream and joined at the end;
  prioN  parN with the first stream at the highest priority, the others at the lowest.
Prints images/s per variant, unmerged and paper-merged, and each variant's merged / unmerged ratio (median of the
rounds' ratios; the variants and models alternate within a round). parN's logits are checked bit for bit against
seqN's (the same kernels on the same parts: a race between the streams would show).
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

import rmeeto
from rmeeto.merge import MergeConfig


def parts_of(variant: str) -> int:
    digits = variant.lstrip("abcdefghijklmnopqrstuvwxyz")
    return int(digits) if digits else 1


@torch.no_grad()
def capture(model, x: torch.Tensor, variant: str):
    """(graph, outputs) of ``variant`` over the batch ``x``."""
    n = parts_of(variant)
    chunks = x.chunk(n)
    lo, hi = torch.cuda.Stream.priority_range() if hasattr(torch.cuda.Stream, "priority_range") else (0, -1)
    if variant.startswith("prio"):
        streams = [torch.cuda.Stream(priority=hi)] + [torch.cuda.Stream(priority=lo) for _ in range(n - 1)]
    elif variant.startswith("par"):
        streams = [torch.cuda.Stream() for _ in range(n)]
    else:
        streams = [torch.cuda.Stream()] * n
    for s, c in zip(streams, chunks):  # plans, workspaces and autotuning settle outside the graph, per stream
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                model(c)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    outs = []
    with torch.cuda.graph(graph, stream=streams[0], capture_error_mode="thread_local"):
        for s in streams[1:]:
            s.wait_stream(streams[0])
        for s, c in zip(streams, chunks):
            with torch.cuda.stream(s):
                outs.append(model(c))
        for s in streams[1:]:
            streams[0].wait_stream(s)
    return graph, outs


def time_graph(graph, repeats: int) -> float:
    """ms per replay over ``repeats`` back-to-back replays."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph.replay()
    start.record()
    for _ in range(repeats):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="vim_tiny_patch16_224")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--variants", default="one,seq2,par2,prio2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=60)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    variants = args.variants.split(",")
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    report = {}
    for name in args.models.split(","):
        torch.manual_seed(0)
        cases = {}
        keep = []
        for merged in (False, True):
            model = rmeeto.create_model(name).cuda().eval()
            if merged:
                rmeeto.apply_merge(model, MergeConfig.paper(name))
            model = model.half()
            x = torch.randn(args.batch, *model.pretrained_cfg.input_size, device="cuda").half()
            graphs = {v: capture(model, x, v) for v in variants}
            for v, (g, outs) in graphs.items():
                g.replay()
            torch.cuda.synchronize()
            for v, (g, outs) in graphs.items():
                if v.startswith(("par", "prio")) and f"seq{parts_of(v)}" in graphs:
                    ref = graphs[f"seq{parts_of(v)}"][1]
                    same = all(torch.equal(a, b) for a, b in zip(outs, ref))
                    print(f"  {name} {'merged' if merged else 'unmerged'} {v}: logits equal seq: {same}", flush=True)
            cases[merged] = graphs
            keep.append((model, x))  # the graphs read the weights and input where they lie
        times = {(m, v): [] for m in (False, True) for v in variants}
        for _ in range(args.rounds):
            for v in variants:
                for m in (False, True):
                    times[(m, v)].append(time_graph(cases[m][v][0], args.repeats))
        rows = {}
        for v in variants:
            ratios = [u / g for u, g in zip(times[(False, v)], times[(True, v)])]
            u = statistics.median(times[(False, v)])
            g = statistics.median(times[(True, v)])
            rows[v] = dict(unmerged_ms=u, merged_ms=g, unmerged_ips=args.batch / u * 1e3,
                           merged_ips=args.batch / g * 1e3, ratio=statistics.median(ratios),
                           ratio_min=min(ratios), ratio_max=max(ratios))
            print(f"{name:24s} {v:6s} unmerged {rows[v]['unmerged_ips']:9.1f} img/s ({u * 1e3:8.1f} us)  merged "
                  f"{rows[v]['merged_ips']:9.1f} ({g * 1e3:8.1f} us)  ratio {rows[v]['ratio']:.4f} "
                  f"({min(ratios):.4f}-{max(ratios):.4f})", flush=True)
        report[name] = rows
        del cases, keep
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()

"""Graphed Vim with the batch split over k CUDA streams inside the graph (k = 1: the plain graph), unmerged and
merged, interleaved in one process: whether latency-bound kernels of one half (the merging layers' matching,
kernel tails) hide behind the other half's work.

    PYTHONPATH=src python3 benchmarks/graph_streams_ab.py [--models vim_small_patch16_224] [--splits 1,2]
        [--rounds 5] [--calls 30] [--batch 128]
"""

from __future__ import annotations

import argparse

import torch

from rmeeto.fast import GraphedForward
from rmeeto.timing import Protocol, measure

from _rounds import models, summary


class StreamSplit:
    """``model`` on ``k`` chunks of the batch, each on its own stream forked from and joined to the current one."""

    def __init__(self, model, k: int):
        self.model, self.k = model, k
        self.streams = [torch.cuda.Stream() for _ in range(k)]

    def __call__(self, x):
        if self.k == 1:
            return self.model(x)
        cur = torch.cuda.current_stream()
        outs = []
        for s, chunk in zip(self.streams, x.chunk(self.k)):
            s.wait_stream(cur)
            with torch.cuda.stream(s):
                outs.append(self.model(chunk))
        for s in self.streams:
            cur.wait_stream(s)
        return torch.cat(outs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="vim_small_patch16_224")
    ap.add_argument("--splits", default="1,2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--batch", type=int, default=128)
    a = ap.parse_args()
    splits = [int(v) for v in a.splits.split(",")]
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}; graphed fp16, batch {a.batch}, "
          f"{a.calls} replays per timing, {a.rounds} rounds, splits {splits}", flush=True)
    protocol = Protocol(warmup=3, repeats=a.calls, per_repeat=False)
    for name in a.models.split(","):
        x = torch.randn(a.batch, 3, 224, 224, device="cuda").half()
        fns, refs = {}, {}
        for variant, m in models(name).items():
            for k in splits:
                g = GraphedForward(StreamSplit(m, k))
                out = g(x).clone()
                refs.setdefault(variant, out)
                same = torch.equal(out, refs[variant])
                print(f"# {name} {variant} split {k}: logits equal to split {splits[0]}: {same}", flush=True)
                fns[(k, variant)] = g
        times = {key: [] for key in fns}
        for _ in range(a.rounds):
            for key, g in fns.items():
                times[key].append(measure(g, [x], batch_size=a.batch, device=x.device, protocol=protocol).median_ms)
        for k in splits:
            print(summary(name, f"split {k}", times[(k, "unmerged")], times[(k, "merged")], a.batch), flush=True)
        del fns
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

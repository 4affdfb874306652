"""Run the merge's matching (match_plan) a few times at one Vim merging-layer shape (fp16, batch 128, no
sizes), for a profiler to catch one warm launch:

    ncu --kernel-name regex:_match_kernel --launch-skip 3 --launch-count 1 ... \\
        python3 benchmarks/match_once.py [--tokens 197] [--channels 384] [--cls 98] [-r 11] [--norm-only]
        [--set KEY=VALUE]

``--norm-only``: the lists an inference merge + norm reads, as ``match_merge_add_norm`` asks for them (only
``kslot`` and ``next`` written where ``MATCH_CONFIG["norm_lists_only"]`` allows it).
"""

from __future__ import annotations

import argparse

import torch

from _match_set import add_set_argument, set_match_config
from rmeeto.merge import plan_cls_index
from rmeeto.ops.triton import merge as mt


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=197)
    ap.add_argument("--channels", type=int, default=384)
    ap.add_argument("--cls", type=int, default=98)
    ap.add_argument("-r", type=int, default=11)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--norm-only", action="store_true", help="the lists of an inference merge + norm")
    add_set_argument(ap)
    a = ap.parse_args()
    set_match_config(a.set, ap.error)
    torch.manual_seed(0)
    metric = torch.randn(a.batch, a.tokens, a.channels, device="cuda", dtype=torch.float16)
    new_cls = plan_cls_index(a.cls, a.tokens, a.r, True)
    ws = mt._workspace(a.batch, a.tokens, a.r, metric.device)
    for _ in range(a.calls):
        mt._match_lists(metric, a.cls, a.r, new_cls, True, ws, norm_only=a.norm_only)
    torch.cuda.synchronize()
    kslot = ws[9]
    print(f"matching x{a.calls}{' (norm lists only)' if a.norm_only else ''}: batch {a.batch}, {a.tokens} tokens, "
          f"{a.channels} channels, r={a.r}; kslot checksum {int(kslot.long().sum())}")


if __name__ == "__main__":
    main()

"""Merged Vim's speed with its matching, or its whole merge, taken out: the most any matching (any merge) could give
issue 14's merged / unmerged ratios with the other kernels as they are.

    cd benchmarks && python3 match_oracle_gpu.py --oracle nomatch -- bench vim_tiny_patch16_224 --preset paper \\
        --modes cudagraph --rounds 3

Each prepared merging step (:class:`rmeeto.ops.triton.merge.MergeNormPlan`: inference, the matching kernel and then
the merge + add + norm kernel) runs as shipped on its first call for a shape (the warm-up, before any graph is
captured), and its plan lists are kept. Its later calls, graph captures included, then run:

  none     as shipped;
  nomatch  the merge + add + norm kernel alone, on the kept lists: what a matching that cost nothing would give;
  nomerge  the same kernel on lists that keep the first L - r tokens in place, none merged into another (an add +
           norm over the L input rows, the last r dropped): what a whole merging step that cost no more than the
           unmerged model's add + norm would give.

Only the times mean anything: nomatch replays the first batch's plan (``rmeeto bench`` times one fixed batch, so
the lists are right for it), nomerge merges nothing. ``--set`` as in bench_set.py. ``--check MODEL`` (CUDA) first
checks that nomatch replays the plan: merged MODEL's logits on a second call equal the shipped path's bit for bit.
"""

from __future__ import annotations

import argparse
import sys

import torch

from _match_set import add_set_argument, set_match_config, split_command
from rmeeto.cli import main as cli_main
from rmeeto.ops.triton import merge as mt

ORACLES = ("none", "nomatch", "nomerge")


def install(oracle: str) -> dict:
    """Replace MergeNormPlan.__call__ for ``oracle`` (nothing for "none"); returns the counts of calls that ran
    the matching ("matched") and that did not ("skipped")."""
    counts = {"matched": 0, "skipped": 0}
    if oracle == "none":
        return counts
    shipped = mt.MergeNormPlan.__call__
    kept: dict = {}

    def call(self, hidden, residual, size, weight):
        batch, L, C = hidden.shape
        key = (id(self), tuple(hidden.shape), hidden.device)
        lists = kept.get(key)
        if lists is None:
            out = shipped(self, hidden, residual, size, weight)
            counts["matched"] += 1
            if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
                return out  # a first call inside a capture: its workspace is the graph's, keep nothing
            ws = mt._inference_workspace(batch, L, self.num_merged, hidden.device)  # the one just used
            nxt, kslot = ws[8], ws[9]
            if oracle == "nomerge":
                tok = torch.arange(L, device=hidden.device, dtype=torch.int32)
                kslot = torch.where(tok < L - self.num_merged, tok, -1).expand(batch, L)
                nxt = torch.full((batch, L), -1, device=hidden.device, dtype=torch.int32)
            kept[key] = (kslot.contiguous().clone(), nxt.contiguous().clone())
            return out
        counts["skipped"] += 1
        kslot, nxt = lists
        num_out = L - self.num_merged
        r_out = torch.empty(batch, num_out, C, device=hidden.device, dtype=torch.float32)
        y = torch.empty(batch, num_out, C, device=hidden.device, dtype=hidden.dtype)
        s_out = torch.empty(batch, num_out, 1, device=hidden.device, dtype=torch.float32)
        self.merge(hidden, residual, size if size is not None else hidden, kslot, nxt, weight, r_out, y, s_out)
        return r_out, y, s_out

    mt.MergeNormPlan.__call__ = call
    return counts


def check(model_name: str) -> None:
    """Merged ``model_name`` (paper preset, fp16, batch 8) under the nomatch oracle: the second call (no matching
    kernel, the first call's lists) must give the shipped path's logits bit for bit; raises otherwise."""
    import rmeeto

    model = rmeeto.create_model(model_name).half().cuda().eval()
    rmeeto.apply_merge(model, rmeeto.MergeConfig.paper(model_name))
    x = torch.randn(8, 3, 224, 224, device="cuda", dtype=torch.half)
    shipped = mt.MergeNormPlan.__call__
    with torch.no_grad():
        ref = model(x)
        counts = install("nomatch")
        try:
            first, second = model(x), model(x)
        finally:
            mt.MergeNormPlan.__call__ = shipped
    if not (torch.equal(first, ref) and torch.equal(second, ref)) or counts["skipped"] == 0:
        raise SystemExit(f"check {model_name}: the oracle's replay differs from the shipped path ({counts}, max "
                         f"diff {(second.float() - ref.float()).abs().max().item():.3g})")
    print(f"check {model_name}: nomatch replays the plan bit for bit ({counts})", flush=True)


def main(argv=None) -> int:
    own, command = split_command(argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--oracle", choices=ORACLES, required=True)
    ap.add_argument("--check", metavar="MODEL", help="first check the nomatch replay on merged MODEL (CUDA)")
    add_set_argument(ap)
    a = ap.parse_args(own)
    set_match_config(a.set, ap.error)
    if a.check:
        check(a.check)
    counts = install(a.oracle)
    print(f"oracle: {a.oracle}; settings:", ", ".join(a.set), flush=True)
    rc = cli_main(command)
    print(f"oracle {a.oracle}: merging steps that ran the matching {counts['matched']}, that skipped it "
          f"{counts['skipped']}", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())

"""The merge + add + RMSNorm kernel (``_merge_norm_kernel``) against the plain add + RMSNorm kernel at the same
sizes, and in other row tiles: graphed time per call, bandwidth, and whether each tile still gives the bits of
the merge kernel followed by the norm kernel (the fused kernel's contract).

    PYTHONPATH=src python3 benchmarks/bench_merge_norm_gpu.py [--reps 30] [--channels 192,384]
        [--tiles "None;(4, 2);(8, 4)"]

Shapes: Vim-Ti / S / B merging layers at batch 128 (197 -> 186 and 109 -> 98 tokens), sizes as after a merge. Runs
against older checkouts too (the kernel over output slots, before the eighteenth session): PYTHONPATH at their
``src`` and at this folder.
"""

from __future__ import annotations

import argparse
import ast

import torch

from bench_merge_gpu import _event_ms, _graphed
from rmeeto.merge import plan_cls_index
from rmeeto.ops.triton import merge as mt, norm as nt

TILES = [None, (2, 4), (4, 4), (8, 4), (2, 8), (4, 8), (8, 8), (2, 2), (4, 2)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--channels", default="192,384,768")
    ap.add_argument("--tiles", default=None, help='";"-separated (rows, warps) tiles; None: the chosen one')
    a = ap.parse_args()
    tiles = TILES if a.tiles is None else [ast.literal_eval(t) for t in a.tiles.split(";")]
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    for C in map(int, a.channels.split(",")):
        for L in (197, 109):
            torch.manual_seed(L + C)
            batch, r = 128, 11
            cls = L // 2
            h = torch.randn(batch, L, C, device="cuda", dtype=torch.float16)
            res = torch.randn(batch, L, C, device="cuda", dtype=torch.float32)
            size = torch.randint(1, 4, (batch, L, 1), device="cuda").float()
            w = torch.rand(C, device="cuda").half() + 0.5
            new_cls = plan_cls_index(cls, L, r, True)
            ws = mt._workspace(batch, L, r, h.device)
            mt._match_lists(h, cls, r, new_cls, True, ws)
            base, head, nxt = ws[4], ws[7], ws[8]
            if len(ws) > 9:  # the kernel over input rows (eighteenth session): per-token slots and lists
                args = (ws[9], nxt, L - r, w, 1e-5)
            else:  # older checkouts: the kernel over output slots
                args = (base, head, nxt, w, 1e-5)
            (hm, rm, sm) = mt._merge_fwd(h, res, size, base, head, nxt)
            ro_ref, y_ref, _ = nt._norm_fwd(hm, rm, w, None, 1e-5)
            plain = _graphed(lambda: nt._norm_fwd(h, res, w, None, 1e-5))
            t_plain = 1e3 * _event_ms(plain, a.reps, 10)
            gb_plain = batch * L * C * 12 / 1e9
            print(f"C={C} L={L}->{L - r}: plain add+norm at L: {t_plain:.1f} us ({gb_plain / t_plain * 1e3:.2f} TB/s)")
            gb = batch * (L + (L - r)) * C * 6 / 1e9
            for tile in tiles:
                mt.MERGE_NORM_TILE = tile
                ro, y, s = mt._merge_norm_fwd(h, res, size, *args)
                same = torch.equal(ro, ro_ref) and torch.equal(y, y_ref) and torch.equal(s, sm)
                t = 1e3 * _event_ms(_graphed(lambda: mt._merge_norm_fwd(h, res, size, *args)), a.reps, 10)
                block_n, block_c, warps = nt.launch_shape(C)
                label = tile or f"chosen {mt._MERGE_NORM_TILES.get(block_c, (block_n, warps))}"
                print(f"   merge+norm tile {label}: {t:.1f} us "
                      f"({gb / t * 1e3:.2f} TB/s) {'same bits' if same else 'BITS DIFFER'}", flush=True)
            mt.MERGE_NORM_TILE = None


if __name__ == "__main__":
    main()

"""The mixer's conv + SiLU forward (both directions, ``rmeeto.ops.triton.conv``) at every token count of the merged
Vim-S / Vim-Ti schedules (batch 128, fp16, x the channels-last half of an in_proj output), in several tiles per
sequence ("grid", ``FWD_FLAT`` off) and over the batch's flat rows ("flat": a tile may span two sequences, each row's
taps stopping at its own sequence's ends, so no tile is part-empty at a sequence's end; session 38 measured it here
as a prototype, now the launcher's choice). Graphed us per call against the first tiling's 197-token call's share;
every variant's outputs are compared with the first one's bit for bit. (Session 38's numbers came from this file's
first version, whose flat rows ran a copy of the kernel inside it, the library's arithmetic; that copy is gone.)

    PYTHONPATH=src python3 benchmarks/conv_tiles_gpu.py [--dims 768,384] [--reps 15]
"""

from __future__ import annotations

import argparse

import torch
import triton

from bench_merge_gpu import _event_ms, _graphed
from rmeeto.ops.triton import conv as tc

SCHEDULES = {384: [197, 192, 187, 182, 177, 172, 167, 162, 157, 152, 147, 76],
             768: [197, 186, 175, 164, 153, 142, 131, 120, 109, 98, 87, 76]}
TILES = [(32, 128, 4), (16, 128, 4), (64, 128, 4), (32, 256, 4), (16, 256, 4), (32, 64, 4), (16, 64, 2), (64, 64, 4)]
FLAT = [(32, 128, 4), (64, 128, 4), (128, 128, 4), (64, 256, 8), (128, 64, 4), (64, 64, 4)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", default="768,384")
    ap.add_argument("--reps", type=int, default=15)
    a = ap.parse_args()
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; "
          f"launcher tiles {tc.FWD_CONFIG}", flush=True)
    saved, saved_flat = dict(tc.FWD_CONFIG), tc.FWD_FLAT
    for D in (int(v) for v in a.dims.split(",")):
        torch.manual_seed(D)
        wf, wb = ((torch.randn(D, 1, 4, device="cuda") / 2).half() for _ in range(2))
        bf, bb = ((torch.randn(D, device="cuda") / 4).half() for _ in range(2))
        sums = {}
        share = None
        for L in SCHEDULES[D]:
            xz = torch.randn(128, L, 2 * D, device="cuda", dtype=torch.float16)
            x = xz[..., :D]
            ref = None
            row = []
            for kind, tiles in [("grid", t) for t in TILES] + [("flat", t) for t in FLAT]:
                tc.FWD_CONFIG.update(BLOCK_L=tiles[0], BLOCK_D=tiles[1], num_warps=tiles[2])
                tc.FWD_FLAT = kind == "flat"
                try:
                    got = tc._fwd_launch(x, wf, bf, wb, bb, True, True)
                    ref = got if ref is None else ref
                    same = all(torch.equal(g, r) for g, r in zip(got, ref))
                    us = 1e3 * _event_ms(_graphed(lambda: tc._fwd_launch(x, wf, bf, wb, bb, True, True)), a.reps, 10)
                except Exception as exc:
                    row.append(f"{kind} {tiles} failed ({type(exc).__name__})")
                    continue
                finally:
                    tc.FWD_CONFIG.clear()
                    tc.FWD_CONFIG.update(saved)
                    tc.FWD_FLAT = saved_flat
                sums[(kind, tiles)] = sums.get((kind, tiles), 0.0) + us
                row.append(f"{kind} {tiles} {us:.1f}{'' if same else ' DIFFERS'}")
            base = sums[("grid", TILES[0])] if L == 197 else None
            if base is not None:
                share = base
            print(f"D={D} L={L} (share {share * L / 197:.1f}): " + "; ".join(row), flush=True)
        total = sum(2 * (share * L / 197) for L in SCHEDULES[D])
        print(f"# D={D} summed over the merged schedule (each token count twice), share {total:.0f} us:", flush=True)
        for key, us in sorted(sums.items(), key=lambda kv: kv[1]):
            print(f"#   {key[0]} {key[1]}: {2 * us:.0f} us", flush=True)


if __name__ == "__main__":
    main()

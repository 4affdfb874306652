"""The mixer's conv + SiLU forward (both directions, ``rmeeto.ops.triton.conv``) at every token count of the merged
Vim-S / Vim-Ti schedules (batch 128, fp16, x the channels-last half of an in_proj output): the launcher's tiles,
other tiles of the same kernel, and a variant that tiles the batch's token rows flat (a tile may span two images,
each row's taps masked at its own image's ends), so no tile is part-empty at a sequence's end. Graphed us per call
against the 197-token call's share; every variant's outputs are compared with the launcher's bit for bit.

    PYTHONPATH=src python3 benchmarks/conv_tiles_gpu.py [--dims 768,384] [--reps 15]
"""

from __future__ import annotations

import argparse

import torch
import triton
import triton.language as tl

from bench_merge_gpu import _event_ms, _graphed
from rmeeto.ops.triton import conv as tc

SCHEDULES = {384: [197, 192, 187, 182, 177, 172, 167, 162, 157, 152, 147, 76],
             768: [197, 186, 175, 164, 153, 142, 131, 120, 109, 98, 87, 76]}
TILES = [(32, 128, 4), (16, 128, 4), (64, 128, 4), (32, 256, 4), (16, 256, 4), (32, 64, 4), (16, 64, 2), (64, 64, 4)]
FLAT = [(32, 128, 4), (64, 128, 4), (128, 128, 4), (64, 256, 8), (128, 64, 4), (64, 64, 4)]


@triton.jit
def _flat_dir(x_ptr, w_ptr, b_ptr, out_ptr, rows, t, offs_d, mask_d, mrow, L, stride_xl, stride_ol,
              K: tl.constexpr, REVERSE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """One direction of the conv for flat rows ``rows`` (position ``t`` in their image), the library's arithmetic."""
    acc = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)
    acc += tc._in_x_dtype(tl.load(b_ptr + offs_d, mask=mask_d, other=0.0), x_ptr)[None, :]
    for k in tl.static_range(K):
        wk = tc._in_x_dtype(tl.load(w_ptr + offs_d * K + k, mask=mask_d, other=0.0), x_ptr)
        if REVERSE:
            shift = K - 1 - k
            m = (t + shift < L) & mrow
        else:
            shift = -(K - 1) + k
            m = (t + shift >= 0) & mrow
        xv = tl.load(x_ptr + (rows + shift)[:, None] * stride_xl + offs_d[None, :], mask=m[:, None] & mask_d[None, :],
                     other=0.0).to(tl.float32)
        acc += xv * wk[None, :]
    out = acc * tl.sigmoid(acc)
    tl.store(out_ptr + rows[:, None] * stride_ol + offs_d[None, :], out.to(out_ptr.dtype.element_ty),
             mask=mrow[:, None] & mask_d[None, :])


@triton.jit
def _conv_flat_kernel(x_ptr, wf_ptr, bf_ptr, wb_ptr, bb_ptr, outf_ptr, outb_ptr, M, L, D, stride_xl, stride_ol,
                      K: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """Both directions over BLOCK_R flat rows (batch x tokens, x's rows one stride apart across images)."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    mrow = rows < M
    t = rows % L
    _flat_dir(x_ptr, wf_ptr, bf_ptr, outf_ptr, rows, t, offs_d, mask_d, mrow, L, stride_xl, stride_ol, K, False,
              BLOCK_R, BLOCK_D)
    _flat_dir(x_ptr, wb_ptr, bb_ptr, outb_ptr, rows, t, offs_d, mask_d, mrow, L, stride_xl, stride_ol, K, True,
              BLOCK_R, BLOCK_D)


def conv_flat(x, wf, bf, wb, bb, tiles):
    batch, L, D = x.shape
    assert x.stride(0) == L * x.stride(1) and x.stride(2) == 1
    of = torch.empty(batch, L, D, device=x.device, dtype=x.dtype)
    ob = torch.empty_like(of)
    br, bd, warps = tiles
    M = batch * L
    _conv_flat_kernel[(triton.cdiv(M, br), triton.cdiv(D, bd))](
        x, wf.reshape(D, -1), bf, wb.reshape(D, -1), bb, of, ob, M, L, D, x.stride(1), of.stride(1), K=wf.shape[-1],
        BLOCK_R=br, BLOCK_D=bd, num_warps=warps)
    return of, ob


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", default="768,384")
    ap.add_argument("--reps", type=int, default=15)
    a = ap.parse_args()
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; "
          f"launcher tiles {tc.FWD_CONFIG}", flush=True)
    saved = dict(tc.FWD_CONFIG)
    for D in (int(v) for v in a.dims.split(",")):
        torch.manual_seed(D)
        wf, wb = ((torch.randn(D, 1, 4, device="cuda") / 2).half() for _ in range(2))
        bf, bb = ((torch.randn(D, device="cuda") / 4).half() for _ in range(2))
        sums = {}
        share = None
        for L in SCHEDULES[D]:
            xz = torch.randn(128, L, 2 * D, device="cuda", dtype=torch.float16)
            x = xz[..., :D]
            ref = tc._fwd_launch(x, wf, bf, wb, bb, True, True)
            row = []
            for tiles in TILES:
                tc.FWD_CONFIG.update(BLOCK_L=tiles[0], BLOCK_D=tiles[1], num_warps=tiles[2])
                try:
                    got = tc._fwd_launch(x, wf, bf, wb, bb, True, True)
                    same = all(torch.equal(g, r) for g, r in zip(got, ref))
                    us = 1e3 * _event_ms(_graphed(lambda: tc._fwd_launch(x, wf, bf, wb, bb, True, True)), a.reps, 10)
                except Exception as exc:
                    row.append(f"{tiles} failed ({type(exc).__name__})")
                    continue
                finally:
                    tc.FWD_CONFIG.clear()
                    tc.FWD_CONFIG.update(saved)
                sums[("grid", tiles)] = sums.get(("grid", tiles), 0.0) + us
                row.append(f"{tiles} {us:.1f}{'' if same else ' DIFFERS'}")
            for tiles in FLAT:
                try:
                    got = conv_flat(x, wf, bf, wb, bb, tiles)
                    same = all(torch.equal(g, r) for g, r in zip(got, ref))
                    us = 1e3 * _event_ms(_graphed(lambda: conv_flat(x, wf, bf, wb, bb, tiles)), a.reps, 10)
                except Exception as exc:
                    row.append(f"flat {tiles} failed ({type(exc).__name__}: {str(exc)[:80]})")
                    continue
                sums[("flat", tiles)] = sums.get(("flat", tiles), 0.0) + us
                row.append(f"flat {tiles} {us:.1f}{'' if same else ' DIFFERS'}")
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

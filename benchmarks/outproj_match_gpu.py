"""Prototype, not library code: the block before a merge's sum + out_proj and the merge's matching in one kernel, a
program per image. Program b computes out_proj for image b's rows (both scan directions' planes summed in float32
and rounded, as ``rmeeto.ops.triton.outproj`` does, then ``@ W.T``; rows in tiles of BLOCK_M, the tile past the
image's last row masked), stores them, waits at a block barrier, then runs the one-launch matching's body on its
own image (``rmeeto.ops.triton.merge``'s helpers, with the launcher's constexprs). It measures whether the matching
can start per image as soon as that image's out_proj is done (no grid-wide wait, one launch less), against the two
launches the models run: graphed us per call at Vim-Ti's merging layers (384 -> 192 channels, batch 128, r=5),
checking that out_proj's output is within rounding of the tiled kernel's and that the lists equal the matching's on
the fused kernel's own output.

    PYTHONPATH=src python3 benchmarks/outproj_match_gpu.py [--reps 15] [--lengths 197,172,147]
        [--tiles "64,64,8,3;128,64,8,3"]   (BLOCK_M, BLOCK_K, warps, stages of the out_proj phase)
"""

from __future__ import annotations

import argparse

import torch
import triton
import triton.language as tl

from bench_merge_gpu import _event_ms, _graphed
from rmeeto.merge import MergeConfig
from rmeeto.ops.triton import merge as mt
from rmeeto.ops.triton import outproj as to
from rmeeto.ops.triton._launch import launch


@triton.jit
def _outproj_match_kernel(
    y_ptr, w_ptr, o_ptr, s_dir, N, K,
    vmax_ptr, vidx_ptr, merged_ptr, dest_ptr, base_ptr, src_ptr, sdst_ptr, head_ptr, next_ptr, kslot_ptr,
    L, C, cls, new_cls, R, L_out,
    OM: tl.constexpr, OK: tl.constexpr, ON: tl.constexpr,
    IEEE: tl.constexpr, ORDERED: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_J: tl.constexpr, NORM_C: tl.constexpr, PLAN_T: tl.constexpr, BLOCK_A: tl.constexpr,
    BLOCK_K: tl.constexpr, UNROLL: tl.constexpr, ONE_J: tl.constexpr = False,
    DOT_UNROLL: tl.constexpr = 1, PDL: tl.constexpr = False, ONE_TILE: tl.constexpr = False,
    RB: tl.constexpr = 0, NORM_ONLY: tl.constexpr = False, ROWS: tl.constexpr = False,
    BLOCK_C2: tl.constexpr = 0,
):
    b = tl.program_id(0).to(tl.int64)
    dt = o_ptr.dtype.element_ty
    cols = tl.arange(0, ON)
    mc = cols < N
    kk = tl.arange(0, OK)
    for r0 in range(0, L, OM):
        loc = r0 + tl.arange(0, OM)
        mr = loc < L
        rows = b * L + loc.to(tl.int64)
        a_ptr = y_ptr + rows[:, None] * K + kk[None, :]
        w_blk = w_ptr + cols[None, :] * K + kk[:, None]
        acc = tl.zeros([OM, ON], tl.float32)
        for k0 in range(0, K, OK):
            a = tl.load(a_ptr + k0, mask=mr[:, None], other=0.0).to(tl.float32)
            a = (a + tl.load(a_ptr + s_dir + k0, mask=mr[:, None], other=0.0).to(tl.float32)).to(dt)
            acc = tl.dot(a, tl.load(w_blk + k0, mask=mc[None, :], other=0.0), acc)
        tl.store(o_ptr + rows[:, None] * N + cols[None, :], acc.to(dt), mask=mr[:, None] & mc[None, :])
    tl.debug_barrier()  # the block's stores visible to its own loads below
    mrows = o_ptr + b * L * N
    best, best_j = mt._partner_best_rows(mrows, L, C, cls, N, IEEE, BLOCK_T, BLOCK_C, BLOCK_J, BLOCK_C2)
    mt._plan_compact(best, best_j, dest_ptr + b * L, base_ptr + b * L_out, src_ptr + b * R, sdst_ptr + b * R,
                     head_ptr + b * L_out, next_ptr + b * L, kslot_ptr + b * L, L, cls, new_cls, R, ORDERED,
                     BLOCK_T, RB, NORM_ONLY)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--lengths", default="197,192,187,182,177,172,167,162,157,152")
    ap.add_argument("--tiles", default="64,64,8,3;128,64,8,3;64,32,8,3;64,64,8,2")
    a = ap.parse_args()
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__, flush=True)
    dev = torch.device("cuda")
    K, N, batch = 384, 192, 128
    sched = {s.tokens_in: s for s in MergeConfig.paper("vim_tiny_patch16_224").schedule(197, 24) if s.merging}
    torch.manual_seed(0)
    w = (torch.randn(N, K, device=dev) / K ** 0.5).half()
    tiles = [tuple(int(v) for v in t.split(",")) for t in a.tiles.split(";")]
    for L in (int(v) for v in a.lengths.split(",")):
        s = sched[L]
        R, cls, new_cls = s.num_merged, s.cls_in, s.cls_out
        y = torch.randn(2, batch, L, K, device=dev, dtype=torch.half)
        out = torch.empty(batch, L, N, device=dev, dtype=torch.half)
        ws = mt._workspace(batch, L, R, dev)
        dest, vmax, vidx, scratch, base, src, sdst, head, nxt, kslot = ws

        def two():  # what a merged model's graph runs: the tiled sum + out_proj, then the one-launch matching
            o = to.sum_out_proj(y, w)
            mt._match_lists(o, cls, R, new_cls, True, ws, norm_only=True)
            return o

        ref = two()
        torch.cuda.synchronize()
        ref_lists = (kslot.clone(), nxt.clone())
        t_two = 1e3 * _event_ms(_graphed(two), a.reps, 10)
        t_out = 1e3 * _event_ms(_graphed(lambda: to.sum_out_proj(y, w)), a.reps, 10)
        print(f"L={L} r={R}: sum + out_proj then matching {t_two:.1f} us (out_proj alone {t_out:.1f})", flush=True)
        grid, tail, meta = mt.match_spec(out, cls, R, new_cls, True, norm_only=True)
        meta.pop("launch_pdl", None)
        meta.pop("PDL", None)
        if not (meta.get("ONE_TILE") and meta.get("ROWS") and meta.get("RB")):
            print("   the matching's one-tile compact path does not apply here; skipped")
            continue
        warps0 = meta.pop("num_warps")
        meta.pop("num_stages", None)
        for bm, bk, warps, stages in tiles:
            m = dict(meta, OM=bm, OK=bk, ON=triton.next_power_of_2(N), num_warps=warps, num_stages=stages)

            def fused():
                launch(_outproj_match_kernel, grid, dev, y, w, out, y.stride(0), N, K, vmax, vidx, scratch, dest,
                       base, src, sdst, head, nxt, kslot, *tail, **m)

            kslot.fill_(-7)
            nxt.fill_(-7)
            try:
                fused()
                torch.cuda.synchronize()
            except Exception as exc:
                print(f"   tiles {bm}x{bk}, {warps} warps, {stages} stages: {type(exc).__name__}: {str(exc)[:200]}")
                continue
            close = (out.float() - ref.float()).abs().max().item()
            same_out = torch.equal(out, ref)
            got = (kslot.clone(), nxt.clone())
            mt._match_lists(out, cls, R, new_cls, True, ws, norm_only=True)
            torch.cuda.synchronize()
            lists_ok = torch.equal(got[0], kslot) and torch.equal(got[1], nxt)
            t = 1e3 * _event_ms(_graphed(fused), a.reps, 10)
            print(f"   fused, out_proj tiles {bm}x{bk}, {warps} warps (matching's {warps0}), {stages} stages: "
                  f"{t:.1f} us; out {'equal' if same_out else f'max diff {close:.2e}'}; lists "
                  f"{'equal to the matching on it' if lists_ok else 'DIFFER'}; the two-launch lists "
                  f"{'equal' if torch.equal(ref_lists[0], got[0]) and torch.equal(ref_lists[1], got[1]) else 'differ'}",
                  flush=True)


if __name__ == "__main__":
    main()

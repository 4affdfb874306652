"""The one-launch matching (``_match_kernel`` over whole rows, the plan in registers) taken apart, graphed us per
call at Vim merging-layer shapes (fp16 metric, batch 128): what each step adds on top of the one before.

    PYTHONPATH=src python3 benchmarks/match_parts_gpu.py [--shapes 197:192:98:5,147:192:68:71,98:384:44:11]
        [--reps 9] [--inner 20] [--set KEY=VALUE]

Per shape (tokens : channels : class index : r), each kernel with the matching's grid (one program per image)
and warps, 20 launches back to back in one CUDA graph:
  empty     a program that does nothing (the launch and the wave);
  loads     the rows of both sets loaded whole and their squares summed (what the partner step reads);
  dot       + the normalised rows' scores (tl.dot), one sum stored;
  partner   + the scores' rounding, mask, best and its index (``_tile_best``): the whole partner step;
  plan      the plan alone (``_plan_compact`` / ``_plan_registers``, the lists the merge + norm reads), from
            stored partners;
  matching  the kernel as the model launches it (``_match_lists``, norm lists only).
Only shapes the model takes the whole-row partner step at (``MATCH_CONFIG["rows_max_elems"]``) are run.
"""

from __future__ import annotations

import argparse

import torch
import triton
import triton.language as tl

from _match_set import add_set_argument, set_match_config
from bench_merge_gpu import _event_ms, _graphed
from rmeeto.merge import plan_cls_index
from rmeeto.ops.triton import merge as mt


@triton.jit
def _empty_kernel(m_ptr, out_ptr, L):
    if tl.program_id(0) < 0:  # never: keeps the arguments
        tl.store(out_ptr, tl.load(m_ptr + L))


@triton.jit
def _rows_stage_kernel(m_ptr, s_mb, s_ml, out_ptr, L, C, cls,
                       STAGE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_J: tl.constexpr,
                       BLOCK_C2: tl.constexpr):
    """``mt._partner_best_rows`` up to STAGE (0: loads and row norms, 1: the dot, 2: the best partners)."""
    b = tl.program_id(0).to(tl.int64)
    rows = m_ptr + b * s_mb
    if STAGE == 2:
        best, best_j = mt._partner_best_rows(rows, L, C, cls, s_ml, False, BLOCK_T, BLOCK_C, BLOCK_J, BLOCK_C2)
        i = tl.arange(0, BLOCK_T)
        tl.store(out_ptr + b * BLOCK_T + i, best + best_j.to(tl.float32))
    else:
        T = L - 1
        NA = (T + 1) // 2
        NB = T // 2
        i = tl.arange(0, BLOCK_T)
        qa = 2 * i
        ta = qa + (qa >= cls).to(tl.int32)
        ma = i < NA
        j = tl.arange(0, BLOCK_J)
        qb = 2 * j + 1
        tb = qb + (qb >= cls).to(tl.int32)
        mb = j < NB
        c = tl.arange(0, BLOCK_C)[None, :]
        xa = tl.load(rows + ta[:, None] * s_ml + c, mask=ma[:, None] & (c < C), other=0.0)
        xb = tl.load(rows + tb[:, None] * s_ml + c, mask=mb[:, None] & (c < C), other=0.0)
        sq_a = tl.sum(xa.to(tl.float32) * xa.to(tl.float32), axis=1)
        sq_b = tl.sum(xb.to(tl.float32) * xb.to(tl.float32), axis=1)
        if BLOCK_C2 > 0:
            c2 = BLOCK_C + tl.arange(0, BLOCK_C2)[None, :]
            xa2 = tl.load(rows + ta[:, None] * s_ml + c2, mask=ma[:, None] & (c2 < C), other=0.0)
            xb2 = tl.load(rows + tb[:, None] * s_ml + c2, mask=mb[:, None] & (c2 < C), other=0.0)
            sq_a += tl.sum(xa2.to(tl.float32) * xa2.to(tl.float32), axis=1)
            sq_b += tl.sum(xb2.to(tl.float32) * xb2.to(tl.float32), axis=1)
        inv_a = mt._inv_norm(sq_a)[:, None]
        inv_b = mt._inv_norm(sq_b)[:, None]
        if STAGE == 0:
            tl.store(out_ptr + b * BLOCK_T + i, tl.sum(inv_a, axis=1) + tl.sum(inv_b, axis=1))
        else:
            xa = (xa.to(tl.float32) * inv_a).to(m_ptr.dtype.element_ty)
            xb = (xb.to(tl.float32) * inv_b).to(m_ptr.dtype.element_ty)
            s = tl.dot(xa, tl.trans(xb))
            if BLOCK_C2 > 0:
                xa2 = (xa2.to(tl.float32) * inv_a).to(m_ptr.dtype.element_ty)
                xb2 = (xb2.to(tl.float32) * inv_b).to(m_ptr.dtype.element_ty)
                s = tl.dot(xa2, tl.trans(xb2), s)
            tl.store(out_ptr + b * BLOCK_T + i, tl.sum(s, axis=1))


@triton.jit
def _plan_only_kernel(best_ptr, idx_ptr, nxt_ptr, kslot_ptr, L, cls, new_cls, R,
                      BLOCK_T: tl.constexpr, RB: tl.constexpr):
    """The plan from stored partners (``best_ptr`` / ``idx_ptr`` [batch, BLOCK_T]), the norm lists only."""
    b = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, BLOCK_T)
    best = tl.load(best_ptr + b * BLOCK_T + i)
    best_j = tl.load(idx_ptr + b * BLOCK_T + i)
    nrow = nxt_ptr + b * L
    krow = kslot_ptr + b * L
    if RB > 0:
        mt._plan_compact(best, best_j, krow, krow, krow, krow, krow, nrow, krow, L, cls, new_cls, R, True,
                         BLOCK_T, RB, True)
    else:
        mt._plan_registers(best, best_j, krow, krow, krow, krow, krow, nrow, krow, L, cls, new_cls, R, True,
                           BLOCK_T, True)


def time_us(fn, reps: int, inner: int) -> float:
    graph_fn = _graphed(lambda: [fn() for _ in range(inner)])
    return _event_ms(graph_fn, reps, 1) / inner * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="197:192:98:5,172:192:86:5,147:192:68:71,98:384:44:11,87:384:39:11")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--inner", type=int, default=20)
    add_set_argument(ap)
    a = ap.parse_args()
    set_match_config(a.set, ap.error)
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    print(f"{'shape':>18s} {'empty':>7s} {'loads':>7s} {'dot':>7s} {'partner':>8s} {'plan':>7s} {'matching':>9s}")
    for shape in a.shapes.split(","):
        L, C, cls, r = (int(v) for v in shape.split(":"))
        torch.manual_seed(L)
        metric = torch.randn(a.batch, L, C, device="cuda", dtype=torch.float16)
        new_cls = plan_cls_index(cls, L, r, True)
        spec = mt.match_spec(metric, cls, r, new_cls, True, norm_only=True)
        if spec is None or not spec[2].get("ROWS"):
            print(f"{shape:>18s} not on the whole-row path, skipped", flush=True)
            continue
        meta = spec[2]
        T, BJ, BC, BC2 = meta["BLOCK_T"], meta["BLOCK_J"], meta["BLOCK_C"], meta["BLOCK_C2"]
        warps, rb = meta["num_warps"], meta["RB"]
        grid = (a.batch,)
        out = torch.empty(a.batch, T, device="cuda", dtype=torch.float32)
        best = torch.empty(a.batch, T, device="cuda", dtype=torch.float32)
        idx = torch.empty(a.batch, T, device="cuda", dtype=torch.int32)
        nxt = torch.empty(a.batch, L, device="cuda", dtype=torch.int32)
        kslot = torch.empty(a.batch, L, device="cuda", dtype=torch.int32)
        ws = mt._workspace(a.batch, L, r, metric.device)

        def stage(s):
            return lambda: _rows_stage_kernel[grid](metric, metric.stride(0), metric.stride(1), out, L, C, cls,
                                                    STAGE=s, BLOCK_T=T, BLOCK_C=BC, BLOCK_J=BJ, BLOCK_C2=BC2,
                                                    num_warps=warps, num_stages=1)

        # partners for the plan alone: the whole-row step's, as the kernel computes them
        mt._match_lists(metric, cls, r, new_cls, True, ws, norm_only=True)
        _rows_stage_kernel[grid](metric, metric.stride(0), metric.stride(1), out, L, C, cls, STAGE=2, BLOCK_T=T,
                                 BLOCK_C=BC, BLOCK_J=BJ, BLOCK_C2=BC2, num_warps=warps, num_stages=1)
        # out holds best + index; recompute them apart for the plan's input
        na = L // 2
        m = metric.float()
        keep = torch.ones(L, dtype=torch.bool, device="cuda")
        keep[cls] = False
        cf = m[:, keep]
        cf = (cf / cf.norm(dim=-1, keepdim=True).clamp_min(1e-12)).half().float()
        sc = (cf[:, 0::2] @ cf[:, 1::2].transpose(1, 2)).half().float()
        bv, bi = sc.max(-1)
        best.fill_(float("-inf"))
        idx.zero_()
        best[:, :na] = bv
        idx[:, :na] = bi.int()
        plan = lambda: _plan_only_kernel[grid](best, idx, nxt, kslot, L, cls, new_cls, r, BLOCK_T=T, RB=rb,
                                               num_warps=warps, num_stages=1)
        plan()
        torch.cuda.synchronize()
        same = torch.equal(kslot, ws[9]) and torch.equal(nxt, ws[8])
        row = {
            "empty": time_us(lambda: _empty_kernel[grid](metric, out, L, num_warps=warps, num_stages=1), a.reps,
                             a.inner),
            "loads": time_us(stage(0), a.reps, a.inner),
            "dot": time_us(stage(1), a.reps, a.inner),
            "partner": time_us(stage(2), a.reps, a.inner),
            "plan": time_us(plan, a.reps, a.inner),
            "matching": time_us(lambda: mt._match_lists(metric, cls, r, new_cls, True, ws, norm_only=True), a.reps,
                                a.inner),
        }
        print(f"{shape:>18s} " + " ".join(f"{v:7.2f}" for v in row.values())
              + f"   (tiles {T}x{BJ}, C {BC}+{BC2}, RB {rb}, {warps} warps; plan lists as the kernel's: {same})",
              flush=True)


if __name__ == "__main__":
    main()

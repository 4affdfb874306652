"""Where the merge's one-launch matching spends its time, and whether splitting an image's best-partner work over
several programs (the last to finish making the plan) is faster: graphed time per call of

- ``one``: the one-launch match kernel as configured (``MATCH_CONFIG``), as the models run it;
- ``partner P/T/W``: the two-kernel path's best-partner kernel alone, P programs per image of T sources, W warps;
- ``plan P/T``: the two-kernel path's plan kernel alone (P programs per image of T sources);
- ``split P/T/W``: a prototype of the split kernel: P programs per image each scoring its tiles of T sources, an
  atomic ticket per image, and the program that takes the last ticket making the plan (same helpers, same bits).

Every call is one of 20 back-to-back launches captured in one CUDA graph (the in-graph gap is counted, as in a
model's graph). Each split variant must write the one-launch kernel's destination map.

    PYTHONPATH=src:benchmarks python3 benchmarks/match_split_gpu.py [--reps 20]
"""

from __future__ import annotations

import argparse

import torch
import triton
import triton.language as tl

from bench_merge_gpu import _event_ms, _graphed
from rmeeto.merge import plan_cls_index
from rmeeto.ops.triton import merge as mt
from rmeeto.ops.triton._launch import cdiv, launch, next_pow2

SHAPES = {  # name: (batch, tokens, channels, class index, merged)
    "vim_ti_197": (128, 197, 192, 98, 5),
    "vim_s_197": (128, 197, 384, 98, 11),
    "vim_s_142": (128, 142, 384, 70, 11),
    "vim_s_98": (128, 98, 384, 49, 11),
    "vim_b_197": (128, 197, 768, 98, 11),
}


@triton.jit
def _split_kernel(m_ptr, s_mb, s_ml, vmax_ptr, vidx_ptr, merged_ptr, dest_ptr, base_ptr, src_ptr, sdst_ptr, head_ptr,
                  next_ptr, kslot_ptr, count_ptr, L, C, cls, new_cls, R, L_out,
                  IEEE: tl.constexpr, ORDERED: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
                  BLOCK_J: tl.constexpr, NORM_C: tl.constexpr, PLAN_T: tl.constexpr, BLOCK_A: tl.constexpr,
                  BLOCK_K: tl.constexpr, UNROLL: tl.constexpr, ONE_J: tl.constexpr, SPLIT: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1)
    NA = L // 2
    rows = m_ptr + b * s_mb
    vrow = vmax_ptr + b * NA
    irow = vidx_ptr + b * NA
    for tile in range(p, tl.cdiv(NA, BLOCK_T), SPLIT):
        mt._partner_tile(rows, vrow, irow, tile, L, C, cls, s_ml, IEEE, BLOCK_T, BLOCK_C, BLOCK_J, NORM_C, UNROLL,
                         ONE_J, 1)
    tl.debug_barrier()
    ticket = tl.atomic_add(count_ptr + b, 1, sem="acq_rel", scope="gpu")
    if ticket % SPLIT == SPLIT - 1:
        row = merged_ptr + b * R
        thr, last_tie = mt._plan_threshold(vrow, row, NA, R, BLOCK_A, BLOCK_K)
        for tile in range(0, tl.cdiv(NA, PLAN_T)):
            mt._plan_tile(vrow, irow, row, thr, last_tie, tile, dest_ptr + b * L, base_ptr + b * L_out,
                          src_ptr + b * R, sdst_ptr + b * R, head_ptr + b * L_out, next_ptr + b * L, kslot_ptr + b * L,
                          L, cls, new_cls, R, ORDERED, PLAN_T, BLOCK_K)


def _graphed_us(fn, reps: int, inner: int = 20) -> float:
    """Median over ``reps`` replays of one CUDA graph of ``inner`` calls of ``fn``, per call (us)."""
    replay = _graphed(lambda: [fn() for _ in range(inner)])
    return 1e3 * _event_ms(replay, reps, 1) / inner


def run_shape(name, batch, L, C, cls, r, reps):
    torch.manual_seed(0)
    metric = torch.randn(batch, L, C, device="cuda", dtype=torch.float16)
    new_cls = plan_cls_index(cls, L, r, True)
    na = L // 2
    ws = mt._workspace(batch, L, r, metric.device)
    dest, vmax, vidx, scratch, base, src, sdst, head, nxt, kslot = ws
    ref = mt._match_lists(metric, cls, r, new_cls, True)[0].clone()
    out = {"one": _graphed_us(lambda: mt._match_lists(metric, cls, r, new_cls, True, ws), reps)}
    print(f"{name}: one-launch {out['one']:.2f} us", flush=True)
    block_a = max(16, next_pow2(na))
    # the parts alone
    for P, T, W in ((1, 128, 8), (2, 64, 8), (2, 64, 4), (4, 32, 4)):
        if cdiv(na, T) > P and P > 1:
            continue
        meta = mt._partner_meta(metric, T, 128, 32)

        def partner(P=P, T=T, W=W, meta=meta):
            launch(mt._best_partner_kernel, (batch, cdiv(na, T)), metric.device, metric, metric.stride(0),
                   metric.stride(1), vmax, vidx, L, C, cls, **meta, num_warps=W, num_stages=1)
        out[f"partner {P}/{T}/{W}"] = t = _graphed_us(partner, reps)
        print(f"{name}: partner only, {cdiv(na, T)} programs per image of {T} sources, {W} warps: {t:.2f} us",
              flush=True)
    for T in (64, 128):
        scr = torch.empty(batch * cdiv(na, T) * r, device="cuda", dtype=torch.int32)

        def plan(T=T, scr=scr):
            launch(mt._plan_kernel, (batch, cdiv(na, T)), metric.device, vmax, vidx, scr, dest, base, src, sdst,
                   head, nxt, kslot, L, cls, new_cls, r, L - r, ORDERED=True, BLOCK_T=T, BLOCK_A=block_a, BLOCK_K=32,
                   num_warps=4)
        out[f"plan {T}"] = t = _graphed_us(plan, reps)
        print(f"{name}: plan only, tiles of {T} sources ({cdiv(na, T)} programs per image): {t:.2f} us", flush=True)
    # the split prototype
    count = torch.zeros(batch, device="cuda", dtype=torch.int32)
    for P, T, W, U in ((2, 64, 8, 2), (2, 64, 4, 2), (2, 64, 4, 4), (4, 32, 4, 2), (4, 32, 4, 4), (4, 32, 2, 4)):
        if cdiv(na, T) < P:
            continue
        meta = mt._partner_meta(metric, T, 128, 32)

        def split(P=P, T=T, W=W, U=U, meta=meta):
            launch(_split_kernel, (batch, P), metric.device, metric, metric.stride(0), metric.stride(1), vmax, vidx,
                   scratch, dest, base, src, sdst, head, nxt, kslot, count, L, C, cls, new_cls, r, L - r, ORDERED=True,
                   **meta, PLAN_T=min(64, block_a), BLOCK_A=block_a, BLOCK_K=32, UNROLL=U, SPLIT=P, num_warps=W,
                   num_stages=1)
        dest.fill_(-1)
        split()
        torch.cuda.synchronize()
        same = torch.equal(dest, ref)
        out[f"split {P}/{T}/{W}/{U}"] = t = _graphed_us(split, reps)
        torch.cuda.synchronize()
        same = same and torch.equal(dest, ref)
        print(f"{name}: split {P} programs per image, tiles of {T}, {W} warps, unroll {U}: {t:.2f} us"
              f"{'' if same else '  DEST DIFFERS FROM ONE-LAUNCH'}", flush=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    a = ap.parse_args()
    print(torch.cuda.get_device_name())
    for name in a.shapes.split(","):
        run_shape(name, *SHAPES[name], a.reps)


if __name__ == "__main__":
    main()

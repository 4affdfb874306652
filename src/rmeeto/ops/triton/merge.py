"""Fused token merging for CUDA: the matching and the size-weighted merge of both streams in two kernels.

:func:`rmeeto.merge.bipartite_match` plus :func:`rmeeto.merge.merge_streams` in PyTorch are some forty small
kernels per merging layer (gathers, norms, a matmul, max, argsort, index arithmetic, then a chain of cat /
gather / scatter_reduce / divide / cast over a packed float32 tensor); on a GPU they cost as much time as the
merge saves. Here it is two (three for long sequences):

1. :func:`match_plan` (one kernel, a program per batch element, up to 256 sources: Vim's 197 tokens; two
   kernels parallel over tiles of sources for longer sequences) takes inverse row norms, scores sources
   against destinations with ``tl.dot`` (rounded to the metric's dtype, as the PyTorch matmul returns them),
   takes each source's best partner, then makes the plan per tile of sources (the merged set found from a
   threshold on the score keys, or up to 128 sources from every source's rank; ranks and slots counted over
   the merged sources only) and writes it as token lists: the output slot of every input token (the
   destination map), the kept token of every slot, the merged sources with their slots, and the merged
   sources of every slot as a linked list in plan order (:func:`source_lists`). Where every source fits the
   kernel's one tile (Vim's 197 tokens and fewer), the plan is made from the partners still in registers,
   without the tiles' round trips through memory: by counts over the merged sources where few merge
   (:func:`_plan_compact`), over all pairs of sources where many do (:func:`_plan_registers`); there, for 16-bit
   metrics whose source tile fits the registers (Vim-Ti; Vim-S below 131 tokens), each row is loaded once,
   whole, for its norm and the dot (:func:`_partner_best_rows`).
   No sort call, no atomics, no host sync, static shapes, one workspace allocation (none in inference:
   :func:`match_merge_fused` keeps one per shape and stream).
2. The merge kernel reads every token of both streams once and writes each output token once:

       out[p] = sum_{t -> p} x[t] * s[t] / sum_{t -> p} s[t]      (s = sizes, 1 before the first merge)

   each slot adding its kept token, then walking its own list of sources in plan order (fixed order:
   deterministic, and the same float sums as a scan of all sources in plan order).

In inference a Vim block adds the merged streams and normalises the sum right after the merge;
:func:`match_merge_add_norm` does that in the merge kernel's place (one kernel for merge, add and RMSNorm,
the merged streams never written), so a merging layer costs two launches in all, the norm's included.

The backward is a gather: dx[t] = dout[p(t)] * s[t] / s_out[p(t)] (sizes carry no gradient). Only the
default merge (reduce "sum", not pruning) takes this path; plans for other distances or partner ranks are
made in PyTorch and turned into the same token lists (:func:`destination_map`, :func:`source_lists`),
everything else stays in PyTorch.
"""

from __future__ import annotations

import threading
from typing import Optional

import torch

from rmeeto.ops.triton import norm as norm_triton
from rmeeto.ops.triton._inductor import library_op
from rmeeto.ops.triton._launch import Launcher, cdiv, launch, next_pow2, pdl_meta
from rmeeto.ops.triton._pdl import follow_previous

Tensor = torch.Tensor

try:
    import triton
    import triton.language as tl

    _HAS_TRITON = True
except Exception:
    triton = None
    tl = None
    _HAS_TRITON = False

__all__ = [
    "destination_map", "source_lists", "match_plan", "match_merge_fused", "match_merge_add_norm",
    "merge_streams_fused", "is_available", "clear_workspaces",
]


_available: Optional[bool] = None


def is_available() -> bool:
    """True when Triton imports and a CUDA device is present (asked once: the merge asks on every forward)."""
    global _available
    if torch.compiler.is_compiling():  # the global neither read nor written while tracing (see selective_scan._get)
        return _HAS_TRITON and torch.cuda.is_available()
    if _available is None:
        _available = _HAS_TRITON and torch.cuda.is_available()
    return _available


def destination_map(plan, num_tokens: int, ordered: bool) -> Tensor:
    """Output position of every input token under ``plan`` (a :class:`rmeeto.merge.MergePlan`): [batch, L]
    int64. Kept tokens map to their own slot, merged sources to their destination's slot, the class token to
    ``plan.new_cls_index``. Layouts are those of :func:`rmeeto.merge.merge_tokens` (ordered: kept tokens in
    original order; unordered: kept sources by score, then destinations)."""
    src = plan.src_idx[..., 0]
    dst = plan.dst_idx[..., 0]
    unm = plan.unm_idx[..., 0]
    batch = src.shape[0]
    dev = src.device
    T = num_tokens - 1  # class-free length
    n_a, n_b = (T + 1) // 2, T // 2
    new_cls = plan.new_cls_index
    if ordered:
        keep = torch.ones(batch, T, dtype=torch.int64, device=dev)
        keep_a = torch.ones(batch, n_a, dtype=torch.int64, device=dev).scatter_(1, src, 0)
        keep[:, 0::2] = keep_a
        rank = keep.cumsum(1) - 1
        pos = rank + (rank >= new_cls).long()
        pos_a, pos_b = pos[:, 0::2].clone(), pos[:, 1::2]
    else:
        n_unm = unm.shape[1]
        k = torch.arange(n_unm, device=dev)
        slot = (k + (k >= new_cls).long()).expand(batch, -1)
        pos_a = torch.zeros(batch, n_a, dtype=torch.int64, device=dev).scatter_(1, unm, slot)
        pos_b = (n_unm + 1 + torch.arange(n_b, device=dev)).expand(batch, -1)
    if src.shape[1] > 0:
        pos_a = pos_a.scatter(1, src, pos_b.gather(1, dst))
    pos_cf = torch.empty(batch, T, dtype=torch.int64, device=dev)
    pos_cf[:, 0::2] = pos_a
    pos_cf[:, 1::2] = pos_b
    c = plan.cls_index
    cls_col = torch.full((batch, 1), new_cls, dtype=torch.int64, device=dev)
    return torch.cat([pos_cf[:, :c], cls_col, pos_cf[:, c:]], dim=1)


if _HAS_TRITON:
    @triton.jit
    def _inv_norm(sq):
        """1 / max(sqrt(sq), 1e-12) for float32 sums of squares ``sq``, IEEE sqrt and division as PyTorch's
        ``x / x.norm().clamp_min(1e-12)``."""
        return tl.div_rn(1.0, tl.maximum(tl.sqrt_rn(sq), 1e-12))

    @triton.jit
    def _inv_norms(rows, t, mt, s_ml, C, BLOCK: tl.constexpr, NORM_C: tl.constexpr, UNROLL: tl.constexpr = 1):
        """1 / max(||metric row t||, 1e-12) in float32 for a vector of tokens ``t`` (mask ``mt``), IEEE sqrt and
        division as PyTorch's; the squares summed in chunks of NORM_C channels (32: the separate norm kernel
        this replaced took 64, which here costs ~50 registers more per thread), so the last bit of a norm may
        differ from that kernel's (and differs from PyTorch's, which sums in yet another order). ``UNROLL``
        chunks per loop trip: their loads can be in flight together (the sums keep their order and bits)."""
        offs_c = tl.arange(0, NORM_C)
        acc = tl.zeros([BLOCK], tl.float32)
        for c0 in tl.range(0, C, NORM_C, loop_unroll_factor=UNROLL):
            c = c0 + offs_c[None, :]
            x = tl.load(rows + t[:, None] * s_ml + c, mask=mt[:, None] & (c < C), other=0.0).to(tl.float32)
            acc += tl.sum(x * x, axis=1)
        return _inv_norm(acc)

    @triton.jit
    def _inv_norms_pair(rows, ta, ma, tb, mb, s_ml, C, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr,
                        NORM_C: tl.constexpr, UNROLL: tl.constexpr = 1):
        """:func:`_inv_norms` of two sets of tokens (``ta`` / ``ma``, ``tb`` / ``mb``) in one loop over the
        channels: the loads of both sets' chunks are in flight together, where two loops expose each set's
        load latencies in turn. Every row's sum has the same chunks in the same order, so the same bits."""
        offs_c = tl.arange(0, NORM_C)
        acc_a = tl.zeros([BLOCK_A], tl.float32)
        acc_b = tl.zeros([BLOCK_B], tl.float32)
        for c0 in tl.range(0, C, NORM_C, loop_unroll_factor=UNROLL):
            c = c0 + offs_c[None, :]
            xa = tl.load(rows + ta[:, None] * s_ml + c, mask=ma[:, None] & (c < C), other=0.0).to(tl.float32)
            xb = tl.load(rows + tb[:, None] * s_ml + c, mask=mb[:, None] & (c < C), other=0.0).to(tl.float32)
            acc_a += tl.sum(xa * xa, axis=1)
            acc_b += tl.sum(xb * xb, axis=1)
        return _inv_norm(acc_a), _inv_norm(acc_b)

    @triton.jit
    def _tile_best(s, j, mb, dtype: tl.constexpr):
        """Scores ``s`` [sources, destinations] (float32 sums) rounded to the metric's ``dtype``, as the PyTorch
        matmul returns them, destinations past the last (``mb`` false) ruled out -> (best score per source, its
        destination ``j``, the first on ties)."""
        s = s.to(dtype).to(tl.float32)
        s = tl.where(mb[None, :], s, float("-inf"))
        best = tl.max(s, axis=1)
        return best, tl.min(tl.where(s == best[:, None], j[None, :], 2147483647), axis=1)

    @triton.jit
    def _partner_best(rows, tile, L, C, cls, s_ml,
                      IEEE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
                      BLOCK_J: tl.constexpr, NORM_C: tl.constexpr, UNROLL: tl.constexpr = 1,
                      ONE_J: tl.constexpr = False, DOT_UNROLL: tl.constexpr = 1):
        """For tile ``tile`` of BLOCK_T sources (even class-free positions) of one batch element (its metric
        rows at ``rows``): scores against every destination (odd positions) of the rows normalised in float32
        and rounded to the metric's dtype, the scores rounded to it too (as the PyTorch matmul returns them),
        and the best one (first on ties) -> (best score [BLOCK_T] float32, its destination [BLOCK_T] int32;
        entries past the sources are meaningless). The inverse row norms are taken here (those of the tile's
        sources and of every destination: a second read of rows the dot reads anyway, where a norm kernel of its
        own cost one more launch per merging layer). ``UNROLL``: channel chunks per loop trip of the norms (same
        order of every sum, fewer exposed load latencies). ``ONE_J`` (the launcher's promise that every
        destination fits one tile of BLOCK_J): the sources' and the destinations' norms in one loop
        (:func:`_inv_norms_pair`), same bits. ``DOT_UNROLL``: channel steps of the dot per loop trip (each still
        accumulates in turn: same bits)."""
        T = L - 1
        NA = (T + 1) // 2
        NB = T // 2
        offs = tl.arange(0, BLOCK_T)
        offs_c = tl.arange(0, BLOCK_C)
        i = tile * BLOCK_T + offs
        qa = 2 * i
        ta = qa + (qa >= cls).to(tl.int32)
        ma = i < NA
        if ONE_J:
            j = tl.arange(0, BLOCK_J)
            qb = 2 * j + 1
            inv_a, inv_b = _inv_norms_pair(rows, ta, ma, qb + (qb >= cls).to(tl.int32), j < NB, s_ml, C,
                                           BLOCK_T, BLOCK_J, NORM_C, UNROLL)
            inv_a = inv_a[:, None]
            inv_b = inv_b[:, None]
        else:
            inv_a = _inv_norms(rows, ta, ma, s_ml, C, BLOCK_T, NORM_C, UNROLL)[:, None]
            inv_b = tl.zeros([BLOCK_J, 1], tl.float32)
        best = tl.full([BLOCK_T], float("-inf"), tl.float32)
        best_j = tl.zeros([BLOCK_T], tl.int32)
        for j0 in range(0, NB, BLOCK_J):
            j = j0 + tl.arange(0, BLOCK_J)
            qb = 2 * j + 1
            tb = qb + (qb >= cls).to(tl.int32)
            mb = j < NB
            if not ONE_J:
                inv_b = _inv_norms(rows, tb, mb, s_ml, C, BLOCK_J, NORM_C, UNROLL)[:, None]
            s = tl.zeros([BLOCK_T, BLOCK_J], tl.float32)
            for c0 in tl.range(0, C, BLOCK_C, loop_unroll_factor=DOT_UNROLL):
                c = c0 + offs_c[None, :]
                xa = tl.load(rows + ta[:, None] * s_ml + c, mask=ma[:, None] & (c < C), other=0.0)
                xb = tl.load(rows + tb[:, None] * s_ml + c, mask=mb[:, None] & (c < C), other=0.0)
                xa = (xa.to(tl.float32) * inv_a).to(rows.dtype.element_ty)
                xb = (xb.to(tl.float32) * inv_b).to(rows.dtype.element_ty)
                if IEEE:
                    s = tl.dot(xa, tl.trans(xb), s, input_precision="ieee")
                else:
                    s = tl.dot(xa, tl.trans(xb), s)
            tile_best, tile_j = _tile_best(s, j, mb, rows.dtype.element_ty)
            better = tile_best > best
            best = tl.where(better, tile_best, best)
            best_j = tl.where(better, tile_j, best_j)
        return best, best_j

    @triton.jit
    def _partner_best_rows(rows, L, C, cls, s_ml, IEEE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
                           BLOCK_J: tl.constexpr, BLOCK_C2: tl.constexpr):
        """:func:`_partner_best` of the one tile of sources where every source fits BLOCK_T, every destination
        BLOCK_J and every channel BLOCK_C + BLOCK_C2 (the launcher's promise; 16-bit metrics; BLOCK_C2 0 or a
        power of two for the channels past BLOCK_C: 192 = 128 + 64 holds no padding): each row of both sets is
        loaded once, whole, its norm summed from those registers and its normalised copy given to the dot.
        :func:`_partner_best` reads every row twice (norms, then the dot's channel steps), each pass a chain of
        dependent trips to memory. The same scores up to the norms' order of summation (here the two parts'
        sums added, there chunks of NORM_C added in turn), so the last bit of a norm, and through it a near-tie,
        may come out otherwise than in :func:`_partner_best`."""
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
        inv_a = _inv_norm(sq_a)[:, None]
        inv_b = _inv_norm(sq_b)[:, None]
        xa = (xa.to(tl.float32) * inv_a).to(rows.dtype.element_ty)
        xb = (xb.to(tl.float32) * inv_b).to(rows.dtype.element_ty)
        s = tl.dot(xa, tl.trans(xb), input_precision="ieee" if IEEE else None)
        if BLOCK_C2 > 0:
            xa2 = (xa2.to(tl.float32) * inv_a).to(rows.dtype.element_ty)
            xb2 = (xb2.to(tl.float32) * inv_b).to(rows.dtype.element_ty)
            s = tl.dot(xa2, tl.trans(xb2), s, input_precision="ieee" if IEEE else None)
        tile_best, tile_j = _tile_best(s, j, mb, rows.dtype.element_ty)
        better = tile_best > float("-inf")  # as _partner_best's first (here only) destination tile
        return tl.where(better, tile_best, float("-inf")), tl.where(better, tile_j, 0)

    @triton.jit
    def _partner_tile(rows, vmax_row, vidx_row, tile, L, C, cls, s_ml,
                      IEEE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
                      BLOCK_J: tl.constexpr, NORM_C: tl.constexpr, UNROLL: tl.constexpr = 1,
                      ONE_J: tl.constexpr = False, DOT_UNROLL: tl.constexpr = 1):
        """:func:`_partner_best` of tile ``tile``, stored at ``vmax_row`` / ``vidx_row``."""
        best, best_j = _partner_best(rows, tile, L, C, cls, s_ml, IEEE, BLOCK_T, BLOCK_C, BLOCK_J, NORM_C, UNROLL,
                                     ONE_J, DOT_UNROLL)
        i = tile * BLOCK_T + tl.arange(0, BLOCK_T)
        ma = i < L // 2
        tl.store(vmax_row + i, best, mask=ma)
        tl.store(vidx_row + i, best_j, mask=ma)

    @triton.jit
    def _best_partner_kernel(m_ptr, s_mb, s_ml, vmax_ptr, vidx_ptr, L, C, cls,
                             IEEE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
                             BLOCK_J: tl.constexpr, NORM_C: tl.constexpr, ONE_J: tl.constexpr = False):
        """:func:`_partner_tile` for tile ``program_id(1)`` of batch element ``program_id(0)``."""
        b = tl.program_id(0).to(tl.int64)
        NA = L // 2
        _partner_tile(m_ptr + b * s_mb, vmax_ptr + b * NA, vidx_ptr + b * NA, tl.program_id(1), L, C, cls, s_ml,
                      IEEE, BLOCK_T, BLOCK_C, BLOCK_J, NORM_C, 1, ONE_J)

    @triton.jit
    def _order_key(v):
        """int32 keys that order like the float32 values ``v`` (-0.0 and +0.0 equal, as float comparisons)."""
        v = tl.where(v == 0.0, 0.0, v)
        bits = v.to(tl.int32, bitcast=True)
        return tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)

    @triton.jit
    def _first_in_plan(cand, uj, j, best_u, best_j, BIG: tl.constexpr):
        """Running "first in plan order" (highest score, then lowest index) over the candidates ``cand``
        [BLOCK_T, BLOCK_K] of one chunk of merged sources (key ``uj``, index ``j``)."""
        cu = tl.where(cand, uj[None, :], -2147483647 - 1)
        tile_u = tl.max(cu, axis=1)
        tile_j = tl.min(tl.where(cand & (uj[None, :] == tile_u[:, None]), j[None, :], BIG), axis=1)
        better = (tile_u > best_u) | ((tile_u == best_u) & (tile_j < best_j))
        return tl.where(better, tile_u, best_u), tl.where(better, tile_j, best_j)

    @triton.jit
    def _ranks(vrow, ui, i, NA, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr):
        """Rank among all NA sources (score keys descending, then index) of the sources ``i`` (keys ``ui``),
        counted over chunks of BLOCK_K sources (four per loop trip: their loads in flight together)."""
        rank = tl.zeros([BLOCK_T], tl.int32)
        for j0 in tl.range(0, NA, BLOCK_K, loop_unroll_factor=4):
            jj = j0 + tl.arange(0, BLOCK_K)
            uj = _order_key(tl.load(vrow + jj, mask=jj < NA, other=0.0))
            ahead = (uj[None, :] > ui[:, None]) | ((uj[None, :] == ui[:, None]) & (jj[None, :] < i[:, None]))
            rank += tl.sum((ahead & (jj < NA)[None, :]).to(tl.int32), axis=1)
        return rank

    @triton.jit
    def _plan_threshold(vrow, row, NA, R, BLOCK_A: tl.constexpr, BLOCK_K: tl.constexpr):
        """Steps 1 and 2 of the plan of one batch element (its best scores at ``vrow``), see
        :func:`_plan_kernel` -> (thr, last_tie): a source is merged iff its key is above ``thr`` or equal to it
        at an index <= ``last_tie``. The merged sources go to the scratch row ``row`` in index order, visible
        to the whole program on return (block barrier)."""
        INT_MIN = tl.full([], -2147483647, tl.int32) - 1
        ja = tl.arange(0, BLOCK_A)
        ua = _order_key(tl.load(vrow + ja, mask=ja < NA, other=0.0))
        ua = tl.where(ja < NA, ua, INT_MIN)
        if BLOCK_A <= 128:
            # 1. up to 128 sources: every source's rank (keys descending, then index), counted over chunks of
            # BLOCK_K sources, where the bit search below is 32 dependent reductions (a block barrier each: most
            # of the plan's time when a program per batch element does it alone)
            merged_a = (_ranks(vrow, ua, ja, NA, BLOCK_A, BLOCK_K) < R) & (ja < NA)
            thr = tl.min(tl.where(merged_a, ua, 2147483647), axis=0)
        else:
            # 1. the threshold key (ans: the bit pattern of the R-th best key, read as unsigned)
            ans = tl.zeros([], tl.int32)
            one = tl.full([], 1, tl.int32)
            for step in range(32):
                cand = ans | (one << (31 - step))
                count = tl.sum((ua >= (cand ^ INT_MIN)).to(tl.int32), axis=0)
                ans = tl.where(count >= R, cand, ans)
            thr = ans ^ INT_MIN
            n_above = tl.sum((ua > thr).to(tl.int32), axis=0)
            tie = ua == thr
            merged_a = (ua > thr) | (tie & (tl.cumsum(tie.to(tl.int32), axis=0) <= R - n_above))
        # merged: key > thr, or key == thr at an index <= last_tie
        last_tie = tl.max(tl.where(merged_a & (ua == thr), ja, -1), axis=0)

        # 2. merged sources in index order (positions 0..R-1), read back after a block barrier
        tl.store(row + tl.cumsum(merged_a.to(tl.int32), axis=0) - 1, ja, mask=merged_a)
        tl.debug_barrier()
        return thr, last_tie

    @triton.jit
    def _plan_tile(vrow, irow, row, thr, last_tie, tile, dest_row, base_row, src_row, sdst_row, head_row, next_row,
                   kslot_row, L, cls, new_cls, R,
                   ORDERED: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr,
                   NORM_ONLY: tl.constexpr = False):
        """Step 3 of the plan of one batch element (see :func:`_plan_kernel`) for source tile ``tile``: best
        scores and partners at ``vrow`` / ``irow``, merged sources in the scratch row ``row``, outputs at the
        ``*_row`` pointers (this batch element's rows). Per input token it also writes, for the merge + norm
        kernel that walks input rows, ``kslot``: the output slot of a kept token, -1 for a merged source; and
        ``next`` beyond the merged sources: at a destination the first source merged into it (its slot's head),
        -1 at every other kept token."""
        NA = L // 2
        BIG: tl.constexpr = 2147483647
        # Index i is source i and destination i (there are never more destinations).
        i = tile * BLOCK_T + tl.arange(0, BLOCK_T)
        ma = i < NA
        ui = _order_key(tl.load(vrow + i, mask=ma, other=0.0))
        di = tl.load(irow + i, mask=ma, other=0)
        merged = ((ui > thr) | ((ui == thr) & (i <= last_tie))) & ma
        rank = tl.zeros([BLOCK_T], tl.int32)
        n_lt = tl.zeros([BLOCK_T], tl.int32)
        n_at = tl.zeros([BLOCK_T], tl.int32)
        head_u = tl.full([BLOCK_T], -2147483647 - 1, tl.int32)
        head_j = tl.full([BLOCK_T], BIG, tl.int32)
        next_u = tl.full([BLOCK_T], -2147483647 - 1, tl.int32)
        next_j = tl.full([BLOCK_T], BIG, tl.int32)
        for k0 in range(0, R, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            mk = k < R
            j = tl.load(row + k, mask=mk, other=0)
            uj = _order_key(tl.load(vrow + j, mask=mk, other=0.0))
            dj = tl.load(irow + j, mask=mk, other=-1)
            same_u = uj[None, :] == ui[:, None]
            ahead = mk[None, :] & ((uj[None, :] > ui[:, None]) | (same_u & (j[None, :] < i[:, None])))
            behind = mk[None, :] & ((uj[None, :] < ui[:, None]) | (same_u & (j[None, :] > i[:, None])))
            rank += tl.sum(ahead.to(tl.int32), axis=1)
            if ORDERED:
                n_lt += tl.sum((mk[None, :] & (j[None, :] < i[:, None])).to(tl.int32), axis=1)
                n_at += tl.sum((mk[None, :] & (j[None, :] <= di[:, None])).to(tl.int32), axis=1)
            head_u, head_j = _first_in_plan(mk[None, :] & (dj[None, :] == i[:, None]), uj, j, head_u, head_j, BIG)
            next_u, next_j = _first_in_plan(behind & (dj[None, :] == di[:, None]), uj, j, next_u, next_j, BIG)

        if ORDERED:
            full_rank = rank  # unused
        else:
            full_rank = _ranks(vrow, ui, i, NA, BLOCK_T, BLOCK_K)
        _plan_write(i, tile, merged, rank, full_rank, di, n_lt, n_at, head_j, next_j, dest_row, base_row, src_row,
                    sdst_row, head_row, next_row, kslot_row, L, cls, new_cls, R, ORDERED, BLOCK_T, NORM_ONLY)

    @triton.jit
    def _plan_write(i, tile, merged, rank, full_rank, di, n_lt, n_at, head_j, next_j, dest_row, base_row, src_row,
                    sdst_row, head_row, next_row, kslot_row, L, cls, new_cls, R,
                    ORDERED: tl.constexpr, BLOCK_T: tl.constexpr, NORM_ONLY: tl.constexpr = False):
        """The plan's lists for the sources and destinations of indices ``i`` (tile ``tile`` of BLOCK_T) from
        what the plan found for them: ``merged``, ``rank`` (a merged source's place in plan order),
        ``full_rank`` (the unordered layout: every source's rank among all of them), the partner ``di``, merged
        sources before source i (``n_lt``) and up to destination ``di`` (``n_at``: the ordered layout), and the
        first merged source routed to destination i (``head_j``) and after source i to its destination
        (``next_j``), BIG where none. See :func:`_plan_tile` for what each list holds."""
        T = L - 1
        NA = (T + 1) // 2
        NB = T // 2
        BIG: tl.constexpr = 2147483647
        ma = i < NA
        mb = i < NB
        qa = 2 * i
        ta = qa + (qa >= cls).to(tl.int32)
        qb = 2 * i + 1
        tb = qb + (qb >= cls).to(tl.int32)
        if ORDERED:
            # merged sources before source i, up to destination i, up to source i's destination
            ra = 2 * i - n_lt
            rb = 2 * i + 1 - (n_lt + merged.to(tl.int32))
            rd = 2 * di + 1 - n_at
            slot_a = ra + (ra >= new_cls).to(tl.int32)
            slot_b = rb + (rb >= new_cls).to(tl.int32)
            slot_d = rd + (rd >= new_cls).to(tl.int32)
        else:
            # kept sources by rank among all sources (R merged ones are ahead of each)
            k = full_rank - R
            slot_a = k + (k >= new_cls).to(tl.int32)
            slot_b = NA - R + 1 + i
            slot_d = NA - R + 1 + di
        kept = ma & ~merged
        head_tok = tl.where(head_j < BIG, 2 * head_j + (2 * head_j >= cls).to(tl.int32), -1)
        next_tok = tl.where(next_j < BIG, 2 * next_j + (2 * next_j >= cls).to(tl.int32), -1)
        if not NORM_ONLY:
            tl.store(dest_row + ta, tl.where(merged, slot_d, slot_a).to(tl.int64), mask=ma)
            tl.store(dest_row + tb, slot_b.to(tl.int64), mask=mb)
            tl.store(base_row + slot_a, ta, mask=kept)
            tl.store(base_row + slot_b, tb, mask=mb)
            tl.store(head_row + slot_a, tl.full([BLOCK_T], -1, tl.int32), mask=kept)
            tl.store(head_row + slot_b, head_tok, mask=mb)
            tl.store(src_row + rank, ta, mask=merged)
            tl.store(sdst_row + rank, slot_d, mask=merged)
        tl.store(next_row + ta, tl.where(merged, next_tok, -1), mask=ma)
        tl.store(next_row + tb, head_tok, mask=mb)
        tl.store(kslot_row + ta, tl.where(merged, -1, slot_a), mask=ma)
        tl.store(kslot_row + tb, slot_b, mask=mb)
        first = (tl.arange(0, BLOCK_T) == 0) & (tile == 0)
        if not NORM_ONLY:
            tl.store(dest_row + cls + tl.arange(0, BLOCK_T), tl.full([BLOCK_T], new_cls, tl.int64), mask=first)
            tl.store(base_row + new_cls + tl.arange(0, BLOCK_T), tl.full([BLOCK_T], cls, tl.int32), mask=first)
            tl.store(head_row + new_cls + tl.arange(0, BLOCK_T), tl.full([BLOCK_T], -1, tl.int32), mask=first)
        tl.store(next_row + cls + tl.arange(0, BLOCK_T), tl.full([BLOCK_T], -1, tl.int32), mask=first)
        tl.store(kslot_row + cls + tl.arange(0, BLOCK_T), tl.full([BLOCK_T], new_cls, tl.int32), mask=first)

    @triton.jit
    def _rank_sources(best, best_j, L, R, BLOCK_T: tl.constexpr):
        """The in-register plans' first step, from every source's best score and partner (``best`` / ``best_j``
        [BLOCK_T], one tile) -> (index i, partner di (0 past the sources), rank of every source among all NA in
        plan order (keys descending, then index: one count over all pairs), merged = rank < R)."""
        i = tl.arange(0, BLOCK_T)
        ma = i < L // 2
        u = _order_key(tl.where(ma, best, 0.0))
        di = tl.where(ma, best_j, 0)
        ahead = (u[None, :] > u[:, None]) | ((u[None, :] == u[:, None]) & (i[None, :] < i[:, None]))
        rank = tl.sum((ahead & ma[None, :]).to(tl.int32), axis=1)
        return i, di, rank, (rank < R) & ma

    @triton.jit
    def _plan_registers(best, best_j, dest_row, base_row, src_row, sdst_row, head_row, next_row, kslot_row,
                        L, cls, new_cls, R, ORDERED: tl.constexpr, BLOCK_T: tl.constexpr,
                        NORM_ONLY: tl.constexpr = False):
        """The whole plan of one batch element whose sources all fit one tile of BLOCK_T (``best`` /
        ``best_j``: every source's best score and partner, from :func:`_partner_best`, still in registers):
        the lists of :func:`_plan_threshold` then :func:`_plan_tile`, the same values, with no round trip
        through memory and no block barrier. Each count is over all pairs of sources at once ([BLOCK_T,
        BLOCK_T]): every source's rank (keys descending, then index) gives the merged set (rank < R), a merged
        source's place in plan order and the unordered layout's slots; the merged sources before a source or
        a destination give the ordered layout's slots; the first merged source (lowest rank) routed to each
        destination, and after each merged source to its destination, give the source lists. No dependent
        loads and no barrier, but [BLOCK_T, BLOCK_T] reductions whatever the number merged: faster than the
        tiled plan's loop over the merged sources only where many merge (``MATCH_CONFIG``)."""
        BIG: tl.constexpr = 2147483647
        i, di, rank, merged = _rank_sources(best, best_j, L, R, BLOCK_T)
        mj = merged[None, :]
        if ORDERED:
            n_lt = tl.sum((mj & (i[None, :] < i[:, None])).to(tl.int32), axis=1)
            n_at = tl.sum((mj & (i[None, :] <= di[:, None])).to(tl.int32), axis=1)
        else:
            n_lt = rank  # unused
            n_at = rank
        # first in plan order = lowest rank; ranks are distinct, so the key rank * BLOCK_T + index names the source
        key = (rank * BLOCK_T + i)[None, :]
        head = tl.min(tl.where(mj & (di[None, :] == i[:, None]), key, BIG), axis=1)
        nxt = tl.min(tl.where(mj & (rank[None, :] > rank[:, None]) & (di[None, :] == di[:, None]), key, BIG), axis=1)
        head_j = tl.where(head < BIG, head % BLOCK_T, BIG)
        next_j = tl.where(nxt < BIG, nxt % BLOCK_T, BIG)
        _plan_write(i, 0, merged, rank, rank, di, n_lt, n_at, head_j, next_j, dest_row, base_row, src_row,
                    sdst_row, head_row, next_row, kslot_row, L, cls, new_cls, R, ORDERED, BLOCK_T, NORM_ONLY)

    @triton.jit
    def _plan_compact(best, best_j, dest_row, base_row, src_row, sdst_row, head_row, next_row, kslot_row,
                      L, cls, new_cls, R, ORDERED: tl.constexpr, BLOCK_T: tl.constexpr, RB: tl.constexpr,
                      NORM_ONLY: tl.constexpr = False):
        """:func:`_plan_registers` where few merge (R <= RB): the same lists, with one all-pairs count (every
        source's rank) and the rest over the merged sources only. After the ranks, the merged sources are
        gathered in plan order into RB slots (slot k: the source of rank k and its partner, one [RB, BLOCK_T]
        sum), and each count that :func:`_plan_registers` takes over all BLOCK_T sources (merged ones before a
        source or a destination, the first merged source routed to a destination or after a source) is taken
        over those RB slots ([BLOCK_T, RB]). Integer counts over the same sets: the same values."""
        BIG: tl.constexpr = 2147483647
        i, di, rank, merged = _rank_sources(best, best_j, L, R, BLOCK_T)
        # slot k < R: the merged source of rank k (its index * BLOCK_T + its partner; ranks are distinct). Each
        # vector is broadcast across the other axis once, packed (every broadcast is a layout change through
        # shared memory and a block barrier)
        k = tl.arange(0, RB)
        rd = tl.where(merged, rank * BLOCK_T + di, -1)[None, :]
        hit = (rd >= 0) & (rd // BLOCK_T == k[:, None])
        packed = tl.sum(tl.where(hit, i[None, :] * BLOCK_T + rd % BLOCK_T, 0), axis=1)[None, :]
        mk = (k < R)[None, :]
        sj = packed // BLOCK_T
        dj = packed % BLOCK_T
        if ORDERED:
            n_lt = tl.sum((mk & (sj < i[:, None])).to(tl.int32), axis=1)
            n_at = tl.sum((mk & (sj <= di[:, None])).to(tl.int32), axis=1)
        else:
            n_lt = rank  # unused
            n_at = rank
        key = k[None, :] * BLOCK_T + sj
        head = tl.min(tl.where(mk & (dj == i[:, None]), key, BIG), axis=1)
        nxt = tl.min(tl.where(mk & (k[None, :] > rank[:, None]) & (dj == di[:, None]), key, BIG), axis=1)
        head_j = tl.where(head < BIG, head % BLOCK_T, BIG)
        next_j = tl.where(nxt < BIG, nxt % BLOCK_T, BIG)
        _plan_write(i, 0, merged, rank, rank, di, n_lt, n_at, head_j, next_j, dest_row, base_row, src_row,
                    sdst_row, head_row, next_row, kslot_row, L, cls, new_cls, R, ORDERED, BLOCK_T, NORM_ONLY)

    @triton.jit
    def _plan_kernel(
        vmax_ptr, vidx_ptr, merged_ptr, dest_ptr, base_ptr, src_ptr, sdst_ptr, head_ptr, next_ptr, kslot_ptr,
        L, cls, new_cls, R, L_out,
        ORDERED: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        """The plan for one tile of BLOCK_T sources (and the destinations of the same indices) of one batch
        element, from every source's best score and partner; grid (batch, cdiv(NA, BLOCK_T)).

        1. The merged set: up to 128 sources, those ranked below R (:func:`_ranks`: keys descending, then
           index); beyond, without a rank of every source, those above the R-th best score key, found by
           setting its 32 bits from the top (32 counts over all NA keys, held in registers), ties at it taken
           by index (a prefix count). Every tile program of a batch element computes the same set.
        2. The merged sources in index order, compacted into this program's scratch row (R entries).
        3. Per tile source / destination, counts over those R (not over all NA): its rank if merged (every
           source ahead of a merged one is merged), how many merged sources lie before it and before its
           destination (the ordered layout's slots), and the lists of sources per destination in plan
           order: the first merged source routed to destination i (the head) and, after source i, the next
           one routed to its destination. "First in plan order" is the highest score, then the lowest index,
           which is the stable descending rank without computing it.
        The unordered layout also ranks its kept sources among all NA (their slots follow that order)."""
        b = tl.program_id(0).to(tl.int64)
        tile = tl.program_id(1)
        NA = L // 2
        vrow = vmax_ptr + b * NA
        irow = vidx_ptr + b * NA
        row = merged_ptr + (b * tl.num_programs(1) + tile) * R
        thr, last_tie = _plan_threshold(vrow, row, NA, R, BLOCK_A, BLOCK_K)
        _plan_tile(vrow, irow, row, thr, last_tie, tile, dest_ptr + b * L, base_ptr + b * L_out, src_ptr + b * R,
                   sdst_ptr + b * R, head_ptr + b * L_out, next_ptr + b * L, kslot_ptr + b * L, L, cls, new_cls, R,
                   ORDERED, BLOCK_T, BLOCK_K)

    @triton.jit
    def _match_kernel(
        m_ptr, s_mb, s_ml, vmax_ptr, vidx_ptr, merged_ptr, dest_ptr, base_ptr, src_ptr, sdst_ptr, head_ptr,
        next_ptr, kslot_ptr, L, C, cls, new_cls, R, L_out,
        IEEE: tl.constexpr, ORDERED: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
        BLOCK_J: tl.constexpr, NORM_C: tl.constexpr, PLAN_T: tl.constexpr, BLOCK_A: tl.constexpr,
        BLOCK_K: tl.constexpr, UNROLL: tl.constexpr, ONE_J: tl.constexpr = False,
        DOT_UNROLL: tl.constexpr = 1, PDL: tl.constexpr = False, ONE_TILE: tl.constexpr = False,
        RB: tl.constexpr = 0, NORM_ONLY: tl.constexpr = False, ROWS: tl.constexpr = False,
        BLOCK_C2: tl.constexpr = 0,
    ):
        """Best partner and plan of one batch element in one program (grid (batch,)): every source tile of
        :func:`_partner_tile`, a block barrier, then the plan's threshold once and every tile of its step 3.
        The same arithmetic as :func:`_best_partner_kernel` then :func:`_plan_kernel` with the same tiles, in
        one launch instead of two; for short sequences, where a batch element's work is a few microseconds.
        ``ONE_TILE`` (the launcher's promise that every source fits one tile of BLOCK_T; its choice, see
        ``MATCH_CONFIG``): the plan from the partners in registers, the same lists: over the merged sources in
        ``RB`` slots (:func:`_plan_compact`), or with ``RB`` 0 over all pairs (:func:`_plan_registers`); vmax, vidx
        and the scratch row unused. ``NORM_ONLY``: only the lists the merge + norm kernel reads (``kslot``,
        ``next``) are written (inference), the others left as they were."""
        follow_previous(PDL)  # under PDL: wait for the previous kernel, then release the next
        b = tl.program_id(0).to(tl.int64)
        NA = L // 2
        rows = m_ptr + b * s_mb
        if ONE_TILE:
            if ROWS:
                best, best_j = _partner_best_rows(rows, L, C, cls, s_ml, IEEE, BLOCK_T, BLOCK_C, BLOCK_J, BLOCK_C2)
            else:
                best, best_j = _partner_best(rows, 0, L, C, cls, s_ml, IEEE, BLOCK_T, BLOCK_C, BLOCK_J, NORM_C,
                                             UNROLL, ONE_J, DOT_UNROLL)
            if RB > 0:
                _plan_compact(best, best_j, dest_ptr + b * L, base_ptr + b * L_out, src_ptr + b * R,
                              sdst_ptr + b * R, head_ptr + b * L_out, next_ptr + b * L, kslot_ptr + b * L, L, cls,
                              new_cls, R, ORDERED, BLOCK_T, RB, NORM_ONLY)
            else:
                _plan_registers(best, best_j, dest_ptr + b * L, base_ptr + b * L_out, src_ptr + b * R,
                                sdst_ptr + b * R, head_ptr + b * L_out, next_ptr + b * L, kslot_ptr + b * L, L, cls,
                                new_cls, R, ORDERED, BLOCK_T, NORM_ONLY)
        else:
            vrow = vmax_ptr + b * NA
            irow = vidx_ptr + b * NA
            for tile in range(0, tl.cdiv(NA, BLOCK_T)):
                _partner_tile(rows, vrow, irow, tile, L, C, cls, s_ml, IEEE, BLOCK_T, BLOCK_C, BLOCK_J, NORM_C,
                              UNROLL, ONE_J, DOT_UNROLL)
            tl.debug_barrier()
            row = merged_ptr + b * R
            thr, last_tie = _plan_threshold(vrow, row, NA, R, BLOCK_A, BLOCK_K)
            for tile in range(0, tl.cdiv(NA, PLAN_T)):
                _plan_tile(vrow, irow, row, thr, last_tie, tile, dest_ptr + b * L, base_ptr + b * L_out,
                           src_ptr + b * R, sdst_ptr + b * R, head_ptr + b * L_out, next_ptr + b * L,
                           kslot_ptr + b * L, L, cls, new_cls, R, ORDERED, PLAN_T, BLOCK_K, NORM_ONLY)

    @triton.jit
    def _merge_fwd_kernel(
        h_ptr, r_ptr, s_ptr, base_ptr, head_ptr, next_ptr, ho_ptr, ro_ptr, so_ptr,
        L, L_out, C,
        s_h_b, s_h_l, s_r_b, s_r_l,
        HAS_SIZE: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        """Output token p of batch b: its kept input token, then the merged sources routed to it, walked
        through the plan's list (head per slot, next per source token, in plan order, so the sum order is
        fixed and the same as a scan of all sources in plan order). The work per slot is its own sources
        only, not all R (a scan of all R was 102 us per call at r=88, 1569 tokens, batch 16, H200)."""
        b = tl.program_id(0).to(tl.int64)
        p = tl.program_id(1)
        offs_c = tl.arange(0, BLOCK_C)
        mc = offs_c < C
        t = tl.load(base_ptr + b * L_out + p)
        if HAS_SIZE:
            w = tl.load(s_ptr + b * L + t)
        else:
            w = 1.0
        acc_h = tl.load(h_ptr + b * s_h_b + t * s_h_l + offs_c, mask=mc, other=0.0).to(tl.float32) * w
        acc_r = tl.load(r_ptr + b * s_r_b + t * s_r_l + offs_c, mask=mc, other=0.0).to(tl.float32) * w
        wsum = tl.zeros([], tl.float32) + w
        t = tl.load(head_ptr + b * L_out + p)
        while t >= 0:
            if HAS_SIZE:
                w = tl.load(s_ptr + b * L + t)
            else:
                w = 1.0
            acc_h += tl.load(h_ptr + b * s_h_b + t * s_h_l + offs_c, mask=mc, other=0.0).to(tl.float32) * w
            acc_r += tl.load(r_ptr + b * s_r_b + t * s_r_l + offs_c, mask=mc, other=0.0).to(tl.float32) * w
            wsum += w
            t = tl.load(next_ptr + b * L + t)
        o = (b * L_out + p) * C + offs_c
        tl.store(ho_ptr + o, (acc_h / wsum).to(ho_ptr.dtype.element_ty), mask=mc)
        tl.store(ro_ptr + o, (acc_r / wsum).to(ro_ptr.dtype.element_ty), mask=mc)
        tl.store(so_ptr + b * L_out + p, wsum)


    @triton.jit
    def _quotient_rows(acc, wsum, ASM: tl.constexpr):
        """acc [BLOCK_N, BLOCK_C] / wsum [BLOCK_N] (float32), with the bits of Triton's ``/`` where 2^-126 <= wsum
        <= 2^126 (sizes are counts of tokens: whole numbers from 1). That ``/`` is PTX div.full.f32, which ptxas
        compiles to range checks on the divisor (scaling both operands where it is beyond 2^126 or below 2^-126),
        a reciprocal (MUFU.RCP) and one multiply (read in an sm_90 build of Triton 3.8; on Triton 3.6 the GPU
        test of the merge + norm against the merge then the norm holds it to the bits); in that range it is the
        multiply by ``rcp.approx`` of the divisor. Here the reciprocal is taken once per row and each element
        costs one multiply, where the division's predicated scalings cost three issue slots an element (Nsight
        Compute, twenty-ninth session: the merge + norm kernel issued an instruction every 6.7-7.9 cycles per warp
        at Vim-Ti / S widths, the plain norm kernel every 21-23, waiting on memory). ``ASM`` off (Triton's
        interpreter, which runs no PTX): the division itself."""
        if ASM:
            inv = tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [wsum], dtype=tl.float32,
                                            is_pure=True, pack=1)
            return acc * inv[:, None]
        else:
            return acc / wsum[:, None]

    @triton.jit
    def _add_unfused(a, b, ASM: tl.constexpr):
        """a + b (float32) that the compiler may not contract with the multiply producing ``a`` or ``b``.
        Triton's ``/`` is PTX div.full.f32, a reciprocal then a multiply, and ptxas fuses that multiply with a
        following add into one FMA (seen in the SASS: MUFU.RCP, FFMA), rounding once where a kernel that
        stores the quotient first rounds twice. An add with an explicit rounding mode (add.rn) is not
        contracted. ``ASM`` off: a plain add (Triton's interpreter runs no PTX and contracts nothing)."""
        if ASM:
            return tl.inline_asm_elementwise("add.rn.f32 $0, $1, $2;", "=f,f,f", [a, b], dtype=tl.float32,
                                             is_pure=True, pack=1)
        else:
            return a + b

    @triton.jit
    def _merge_norm_kernel(
        h_ptr, r_ptr, s_ptr, kslot_ptr, next_ptr, w_ptr, ro_ptr, y_ptr, so_ptr,
        L, L_out, C, s_h_b, s_h_l, s_r_b, s_r_l, eps,
        HAS_SIZE: tl.constexpr, ASM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
        PDL: tl.constexpr = False, FLAT: tl.constexpr = False,
    ):
        """The merge of :func:`_merge_fwd_kernel` followed by the residual add + RMSNorm of
        :mod:`rmeeto.ops.triton.norm` (no drop path) for BLOCK_N input tokens of one batch element (grid
        (cdiv(L, BLOCK_N), batch): a program's rows share their batch index, where a row index per row was divided
        by L, and programs launched one after another take rows one after another; ``FLAT``, past the grid's
        65,535 in its second dimension: grid (batch * cdiv(L, BLOCK_N),), the batch index divided out of the
        program index; the tile and its row sums are the same as over flat rows either way), without writing
        the merged streams. A kept token's row (``kslot`` >= 0) is loaded at once, at its own address as the
        norm kernel's rows are (no load waits on an index: a kernel walking output slots waited for the slot's
        kept token first, 3.1 TB/s against the norm kernel's 4.1), then the sources merged into it are added
        by walking its list (``next`` from the kept token, in plan order) in the merge kernel's order and
        rounding (hidden rounded to its dtype, residual float32); it is added and normalised with the norm
        kernel's arithmetic (its ``rms_rows``) on a [BLOCK_N, BLOCK_C] tile whose row sums are the norm
        kernel's (its own tile, or one measured to sum alike: ``_MERGE_NORM_TILES``) and written at its slot.
        So the outputs are those of the two kernels in a row. A merged source's row is read and dropped (the
        row of the token it went to adds it): r / L more reads for no wait. Rows walk their lists together,
        each stopping at its own end."""
        follow_previous(PDL)  # under PDL: wait for the previous kernel, then release the next
        if FLAT:
            tiles = tl.cdiv(L, BLOCK_N)
            b = tl.program_id(0) // tiles
            t0 = (tl.program_id(0) - b * tiles) * BLOCK_N
        else:
            b = tl.program_id(1)
            t0 = tl.program_id(0) * BLOCK_N
        tok = t0 + tl.arange(0, BLOCK_N)
        b = b.to(tl.int64)
        mr = tok < L
        hb = h_ptr + b * s_h_b
        rb = r_ptr + b * s_r_b
        lists = b * L
        slot = tl.load(kslot_ptr + lists + tok, mask=mr, other=-1)
        t = tl.load(next_ptr + lists + tok, mask=mr, other=-1)
        if HAS_SIZE:
            w = tl.load(s_ptr + lists + tok, mask=mr, other=1.0)
        else:
            w = tl.full([BLOCK_N], 1.0, tl.float32)
        cols = tl.arange(0, BLOCK_C)
        mc = cols[None, :] < C
        m = mr[:, None] & mc
        t64 = tok.to(tl.int64)[:, None]
        acc_h = tl.load(hb + t64 * s_h_l + cols[None, :], mask=m, other=0.0)
        acc_r = tl.load(rb + t64 * s_r_l + cols[None, :], mask=m, other=0.0)
        acc_h = acc_h.to(tl.float32) * w[:, None]
        acc_r = acc_r.to(tl.float32) * w[:, None]
        wsum = w
        kept = slot >= 0
        t = tl.where(kept, t, -1)
        while tl.max(t, axis=0) >= 0:
            live = t >= 0
            if HAS_SIZE:
                w = tl.load(s_ptr + lists + t, mask=live, other=0.0)
            else:
                w = tl.full([BLOCK_N], 1.0, tl.float32)
            m = live[:, None] & mc
            t64 = t.to(tl.int64)[:, None]
            xh = tl.load(hb + t64 * s_h_l + cols[None, :], mask=m, other=0.0)
            xr = tl.load(rb + t64 * s_r_l + cols[None, :], mask=m, other=0.0)
            acc_h = tl.where(live[:, None], acc_h + xh.to(tl.float32) * w[:, None], acc_h)
            acc_r = tl.where(live[:, None], acc_r + xr.to(tl.float32) * w[:, None], acc_r)
            wsum = tl.where(live, wsum + w, wsum)
            t = tl.load(next_ptr + lists + t, mask=live, other=-1)
        hm = _quotient_rows(acc_h, wsum, ASM).to(h_ptr.dtype.element_ty)
        rm = _quotient_rows(acc_r, wsum, ASM).to(r_ptr.dtype.element_ty)
        r = _add_unfused(rm.to(tl.float32), hm.to(tl.float32), ASM)
        _, y = norm_triton.rms_rows(r, w_ptr, cols, C, eps)
        out = b * L_out + slot
        off = out[:, None] * C + cols[None, :]
        m = (mr & kept)[:, None] & mc
        tl.store(ro_ptr + off, r, mask=m)
        tl.store(y_ptr + off, y.to(y_ptr.dtype.element_ty), mask=m)
        tl.store(so_ptr + out, wsum, mask=mr & kept)


def _token_lists(dest: Tensor, src_tok: Tensor, num_out: int) -> tuple[Tensor, Tensor, Tensor]:
    """base [batch, num_out]: the kept input token of every output slot; src [batch, r]: original indices
    of the merged sources; sdst [batch, r]: their output slots. int32, no sort, no host sync."""
    batch, L = dest.shape
    keep = torch.ones(batch, L, dtype=torch.bool, device=dest.device)
    if src_tok.shape[1] > 0:
        keep.scatter_(1, src_tok, False)
    tok = torch.arange(L, device=dest.device, dtype=torch.int32).expand(batch, -1)
    base = torch.empty(batch, num_out, dtype=torch.int32, device=dest.device)
    # every slot has exactly one kept token; merged sources are routed to a scratch column and dropped
    scratch = torch.where(keep, dest, torch.full_like(dest, num_out))
    full = torch.empty(batch, num_out + 1, dtype=torch.int32, device=dest.device).scatter_(1, scratch, tok)
    base.copy_(full[:, :num_out])
    sdst = dest.gather(1, src_tok).to(torch.int32)
    return base, src_tok.to(torch.int32).contiguous(), sdst.contiguous()


def source_lists(src: Tensor, sdst: Tensor, num_out: int, num_tokens: int) -> tuple[Tensor, Tensor]:
    """The merged sources of every output slot as linked lists in plan order, from the plan's token lists.

    src [batch, r] (merged source tokens in plan order), sdst [batch, r] (their output slots) ->
    (head [batch, num_out] int32: the first source token routed to each slot, -1 for none;
    next [batch, num_tokens] int32: for each merged source token, the next source token routed to the same
    slot, -1 at the end; entries of tokens that are not merged sources are -1). Walking head -> next
    visits exactly ``[src[k] for k in range(r) if sdst[k] == p]`` in that order. No sort, no atomics:
    an r x r comparison (r is the number of merged tokens of one layer)."""
    batch, r = src.shape
    dev = src.device
    head = torch.full((batch, num_out + 1), -1, dtype=torch.int32, device=dev)
    nxt = torch.full((batch, num_tokens), -1, dtype=torch.int32, device=dev)
    if r > 0:
        k = torch.arange(r, device=dev)
        same = sdst[:, :, None] == sdst[:, None, :]  # [batch, r, r]: source k and k2 share a slot
        later = same & (k[None, None, :] > k[None, :, None])
        after = torch.where(later, k, r).amin(-1)  # next plan position with the same slot (r: none)
        next_tok = torch.where(after < r, src.gather(1, after.clamp(max=r - 1)), -1).to(torch.int32)
        nxt.scatter_(1, src.long(), next_tok)  # merged source tokens are distinct
        first = ~(same & (k[None, None, :] < k[None, :, None])).any(-1)
        # one first source per slot; the others go to a scratch column that is dropped
        head.scatter_(1, torch.where(first, sdst, num_out).long(), src.to(torch.int32))
    return head[:, :num_out].contiguous(), nxt


def _source_tokens(plan) -> Tensor:
    """Original token indices of the merged sources, in plan order: [batch, r] int64."""
    q = plan.src_idx[..., 0] * 2  # class-free position of source j is 2j
    return q + (q >= plan.cls_index).long()


def _kernel_inputs(hidden: Tensor, residual: Tensor, size: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """The merge kernels' inputs: both streams with unit channel stride, sizes as float32 [batch, L] in memory
    (a dummy, never read, when there are none: the kernels' HAS_SIZE is off)."""
    if hidden.stride(2) != 1:
        hidden = hidden.contiguous()
    if residual.stride(2) != 1:
        residual = residual.contiguous()
    if size is None:
        s = hidden
    elif size.dtype == torch.float32 and size.is_contiguous():
        s = size  # [batch, L, 1] is [batch, L] in memory
    else:
        s = size.reshape(hidden.shape[0], hidden.shape[1]).float().contiguous()
    return hidden, residual, s


def _merge_fwd(hidden: Tensor, residual: Tensor, size: Optional[Tensor], base: Tensor, head: Tensor,
               nxt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Merge launcher: hidden, residual [batch, L, C], size [batch, L, 1] or None, the plan's per-slot lists (base,
    head [batch, L - r], nxt [batch, L] int32) -> (hidden [batch, L - r, C], residual [batch, L - r, C],
    size [batch, L - r, 1] float32)."""
    batch, L, C = hidden.shape
    num_out = base.shape[1]
    hidden, residual, s = _kernel_inputs(hidden, residual, size)
    dev = hidden.device
    h_out = torch.empty(batch, num_out, C, device=dev, dtype=hidden.dtype)
    r_out = torch.empty(batch, num_out, C, device=dev, dtype=residual.dtype)
    s_out = torch.empty(batch, num_out, 1, device=dev, dtype=torch.float32)
    block_c = next_pow2(C)
    launch(_merge_fwd_kernel, (batch, num_out), dev,
           hidden, residual, s, base, head, nxt, h_out, r_out, s_out,
           L, num_out, C, hidden.stride(0), hidden.stride(1), residual.stride(0), residual.stride(1),
           HAS_SIZE=size is not None, BLOCK_C=block_c, num_warps=4 if block_c >= 512 else 2)
    return h_out, r_out, s_out


# (rows per program, warps) of the merge + norm kernel by channel block, where another tile than the norm kernel's
# (norm_triton.launch_shape) measured faster and gave the same bits as the merge kernel then the norm kernel, for
# 16-bit hidden states only (with float32 ones (2, 4) changed them at C=768: GPU test, fifteenth session); other
# widths and dtypes keep the norm kernel's tile. Eighteenth session, the kernel over input rows (H200,
# benchmarks/bench_merge_norm_gpu.py, batch 128, graphed us per call at 197 -> 186 / 109 -> 98 tokens): C=384
# (2, 2) 31.9 / 20.5 (the norm kernel's (4, 4): 38.0 / 23.8; the kernel over output slots took 35.3 / 21.8 in its
# best tile); C=768 (2, 4) 60.4 / 35.2 (output slots: 66.8 / 38.7); (2, 2) and (4, 2) changed the row sums' bits
# at C=768; C=192 (4, 2) 20.5 / 10.6 (the norm kernel's (8, 4): 21.1 / 11.4). Twenty-ninth session (call 2, the
# kernel with one reciprocal per row; tiles (8, 4), (2, 2), (4, 4), (2, 4) timed again): the same choices (C=192
# (2, 2) 18.2 / 9.3 against (4, 2) 18.5 / 8.9; (2, 4) changed the bits at C=192). Call 3, the final grid: C=192
# 18.1 / 8.9, C=384 31.1 / 18.9, C=768 57.9 / 33.9 (the plain add + norm at the input length: 16.4 / 7.8,
# 31.9 / 18.6, 59.1 / 34.4). MERGE_NORM_TILE: a benchmark's override for every width.
_MERGE_NORM_TILES = {256: (4, 2), 512: (2, 2), 1024: (2, 4)}
MERGE_NORM_TILE = None
MERGE_NORM_GRID_Y = 65535  # CUDA's limit on a grid's second dimension: batches past it take the flat grid


def _merge_norm_fwd(hidden: Tensor, residual: Tensor, size: Optional[Tensor], kslot: Tensor, nxt: Tensor,
                    num_out: int, weight: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Merge + residual add + RMSNorm launcher (inference): hidden [batch, L, C], residual [batch, L, C] float32,
    size as :func:`_merge_fwd`, the plan's per-token lists (kslot, nxt [batch, L] int32: :func:`_plan_tile`)
    into ``num_out`` tokens, the norm's weight [C] -> (residual_out [batch, L - r, C] float32, normed
    [batch, L - r, C] in hidden's dtype, size [batch, L - r, 1] float32): what :func:`_merge_fwd` followed by
    :func:`rmeeto.ops.triton.norm` 's forward (no drop path) returns, with one launch and without the merged
    streams' round trip through memory."""
    batch, L, C = hidden.shape
    hidden, residual, s = _kernel_inputs(hidden, residual, size)
    dev = hidden.device
    r_out = torch.empty(batch, num_out, C, device=dev, dtype=torch.float32)
    y = torch.empty(batch, num_out, C, device=dev, dtype=hidden.dtype)
    s_out = torch.empty(batch, num_out, 1, device=dev, dtype=torch.float32)
    grid, tail, meta = merge_norm_spec(hidden, residual, size is not None, num_out, eps)
    launch(_merge_norm_kernel, grid, dev, hidden, residual, s, kslot, nxt, weight, r_out, y, s_out, *tail, **meta)
    return r_out, y, s_out


def merge_norm_spec(hidden: Tensor, residual: Tensor, has_size: bool, num_out: int, eps: float
                    ) -> tuple[tuple, tuple, dict]:
    """(grid, scalar arguments after the tensors, constexprs and launch options) of the merge + norm kernel over
    the kernel inputs ``hidden`` / ``residual`` (:func:`_kernel_inputs`) into ``num_out`` tokens (a program per
    BLOCK_N input tokens of one batch element). Its tensors: hidden, residual, sizes, kslot, nxt, weight,
    residual_out, normed, size_out."""
    batch, L, C = hidden.shape
    block_n, block_c, warps = norm_triton.launch_shape(C)
    if MERGE_NORM_TILE is not None:
        block_n, warps = MERGE_NORM_TILE
    elif hidden.element_size() == 2:
        block_n, warps = _MERGE_NORM_TILES.get(block_c, (block_n, warps))
    tail = (L, num_out, C, hidden.stride(0), hidden.stride(1), residual.stride(0), residual.stride(1), float(eps))
    meta = dict(HAS_SIZE=has_size, ASM=hidden.device.type == "cuda", BLOCK_N=block_n, BLOCK_C=block_c,
                num_warps=warps, **pdl_meta())
    if batch > MERGE_NORM_GRID_Y:
        meta["FLAT"] = True
        return (batch * cdiv(L, block_n),), tail, meta
    return (cdiv(L, block_n), batch), tail, meta


def _merge_bwd(d_h: Optional[Tensor], d_r: Optional[Tensor], size: Optional[Tensor], dest: Tensor, s_out: Tensor,
               h_dtype: torch.dtype, r_dtype: torch.dtype) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """Backward of the merge (a gather, in PyTorch): dx[t] = dout[dest[t]] * size[t] / s_out[dest[t]]."""
    idx = dest[..., None]
    w = s_out.gather(1, idx).reciprocal()  # [batch, L, 1]
    if size is not None:
        w = w * size.float()
    grads = []
    for g, dtype in ((d_h, h_dtype), (d_r, r_dtype)):
        grads.append(None if g is None else (g.float().gather(1, idx.expand(-1, -1, g.shape[-1])) * w).to(dtype))
    return grads[0], grads[1]


class _FusedMerge(torch.autograd.Function):
    """Forward: the merge kernel over the per-slot lists of a plan. Backward: a gather over the destination map.
    The eager twin of the custom op ``rmeeto::merge_fused`` (same launcher and backward)."""

    @staticmethod
    def forward(ctx, hidden, residual, size, dest, base, head, nxt):
        h_out, r_out, s_out = _merge_fwd(hidden, residual, size, base, head, nxt)
        ctx.save_for_backward(size, dest, s_out)
        ctx.dtypes = (hidden.dtype, residual.dtype)
        ctx.mark_non_differentiable(s_out)
        return h_out, r_out, s_out

    @staticmethod
    def backward(ctx, d_h, d_r, _d_s):
        size, dest, s_out = ctx.saved_tensors
        return _merge_bwd(d_h, d_r, size, dest, s_out, *ctx.dtypes) + (None, None, None, None, None)


@library_op("merge_fused")
def _merge_op(hidden: Tensor, residual: Tensor, size: Optional[Tensor], dest: Tensor, base: Tensor, head: Tensor,
              nxt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return _merge_fwd(hidden, residual, size, base, head, nxt)


@torch.library.register_fake(_merge_op)
def _(hidden, residual, size, dest, base, head, nxt):
    batch, _, C = hidden.shape
    num_out = base.shape[1]
    return (hidden.new_empty(batch, num_out, C), residual.new_empty(batch, num_out, C),
            hidden.new_empty(batch, num_out, 1, dtype=torch.float32))


def _merge_setup_context(ctx, inputs, output):
    hidden, residual, size, dest, base, head, nxt = inputs
    ctx.save_for_backward(size, dest, output[2])
    ctx.dtypes = (hidden.dtype, residual.dtype)
    ctx.mark_non_differentiable(output[2])  # sizes carry no gradient (as in _FusedMerge)


def _merge_backward(ctx, d_h, d_r, _d_s):
    size, dest, s_out = ctx.saved_tensors
    return _merge_bwd(d_h, d_r, size, dest, s_out, *ctx.dtypes) + (None, None, None, None, None)


torch.library.register_autograd(_merge_op, _merge_backward, setup_context=_merge_setup_context)


def _merge(hidden, residual, size, dest, base, head, nxt) -> tuple[Tensor, Tensor, Tensor]:
    """The custom op while torch.compile traces, else the autograd function, else (no gradient needed) the
    launcher."""
    if torch.compiler.is_compiling():
        return _merge_op(hidden, residual, size, dest, base, head, nxt)
    if torch.is_grad_enabled() and (hidden.requires_grad or residual.requires_grad):
        return _FusedMerge.apply(hidden, residual, size, dest, base, head, nxt)
    return _merge_fwd(hidden, residual, size, base, head, nxt)


def merge_streams_fused(hidden: Tensor, residual: Tensor, size: Optional[Tensor], plan, ordered: bool):
    """Size-weighted merge of the two streams with one fused kernel, for a plan made in PyTorch
    (:func:`rmeeto.merge.bipartite_match`, any distance / partner rank) -> ((hidden, residual), new_size).
    Same result as ``merge_streams([hidden, residual], size, plan, "sum")`` up to float rounding."""
    L = hidden.shape[1]
    num_out = L - plan.src_idx.shape[1]
    dest = destination_map(plan, L, ordered)
    base, src, sdst = _token_lists(dest, _source_tokens(plan), num_out)
    head, nxt = source_lists(src, sdst, num_out, L)
    h, r, s = _merge(hidden, residual, size, dest, base, head, nxt)
    return (h, r), s


_PLAN_TILE = 64  # sources per plan program (see _match_lists)

# Tiles of the best-partner kernel: (sources, destinations, channel step, warps, pipeline stages), none of
# which spill on sm_90 (registers with the row norms taken inside: 125, 152, 198, 203, 212, as before that
# fold, benchmarks/compile_merge.py; norms summed in 64-channel chunks took 174 at the default tiles, which
# halves the programs an SM holds at 8 warps). The first is the default, measured at Vim-S
# shapes; at 1569 tokens and batch 16 it makes only 208 programs (74 us, H200), where smaller source tiles
# give more programs per SM. benchmarks/bench_merge_gpu.py --partner-tiles times each at both shapes;
# PARTNER_CONFIG holds the choice for short and long sequences (more than _LONG_SOURCES sources).
PARTNER_TILES = [(64, 64, 32, 8, 2), (32, 64, 32, 4, 2), (128, 64, 32, 8, 2), (64, 128, 32, 8, 2), (32, 64, 64, 4, 2)]
# measured on an H200 (sixth session, benchmarks/tune_partner_video.py): Vim-S match_plan 31.2 us with tiles 0
# (32.8-42.3 with the others); VideoMamba-S f8 (1569 tokens) 144.3 us with tiles 2 (147.5 with tiles 0).
PARTNER_CONFIG = {"short": PARTNER_TILES[0], "long": PARTNER_TILES[2]}
_LONG_SOURCES = 256

# Tiles of the one-program-per-batch-element match kernel (_match_kernel: best partner and plan in one launch),
# taken for short sequences (at most _LONG_SOURCES sources): (sources, destinations, channel step, warps,
# row-norm chunks per loop trip of its best-partner part, sources per tile of its plan part).
# benchmarks/bench_merge_gpu.py --match-tiles times each against the two-kernel path. MATCH_CONFIG["fused"]
# False: always the two kernels (best partner, plan), as before the fused kernel.
MATCH_TILES = [(128, 128, 32, 8, 2, 64), (64, 64, 32, 8, 4, 64), (128, 128, 32, 8, 2, 128), (128, 64, 32, 8, 4, 128),
               (64, 64, 32, 4, 4, 64), (128, 128, 32, 8, 1, 128), (128, 128, 16, 8, 2, 64)]
# tiles for up to 64 sources ("small"), for more ("large") and for more at 768 channels or wider ("wide"),
# measured on an H200 (bench_merge_gpu.py --match-tiles, graphed match_plan). Fourteenth session: at 98
# sources (197 tokens) the first, 15.2 / 19.7 / 32.1 us at Vim-Ti / S / B widths against 20.9 / 30.4 / 49.1 us
# for the two kernels; at 43 sources (87 tokens) the second, 11.5 / 16.6 us (S / B) against 16.0 / 24.2 us.
# Fifteenth session (call 1), with the norms in one loop ("one_j"): Ti / S 14.8 / 18.9 us at 197 tokens (large),
# B 29.1 us with the third tiles and the dot's channel steps two per loop trip ("wide", dot unroll 2; 31.4
# with the large tiles, unroll 1), S / B 11.3 / 16.3 us at 87 tokens (small). Unrolling the dot was slower at
# 384 channels and in the small tiles.
# "one_j": when every destination fits one tile, the sources' and destinations' row norms in one loop
# (_inv_norms_pair; same bits either way); "dot_unroll": None, or channel steps of the partner's dot per loop
# trip for every size (a sweep's override; the order of the sums is the same either way). Eighteenth session
# (H200, a temporary override not kept): software pipelining of the dot's or the norms' channel loop (2 or 3
# stages, or num_stages 2 for the launch), norms in chunks of 64, dot steps of 64 or 4 warps were all slower
# at Vim-Ti / S shapes (197, 142, 98 tokens) than these tiles, by 0.9-5.3 us per call
# "one_tile_min_r": where every source fits the partner step's one tile of sources (Vim's 197 tokens and fewer) and
# at least this many are merged, the plan from the partners in registers (_plan_registers: the same lists, no
# scratch rows, no barrier); else (and with None always) the tiled plan. Twenty-sixth session (H200, graphed
# match_plan, benchmarks/match_schedule_gpu.py --ab): the registers' all-pairs counts cost more than the tiled plan's
# loop over few merged sources (Vim-Ti, r=5: 16.1-16.4 against 14.5-14.9 us; Vim-S, r=11: 19.7-20.6 against
# 18.3-19.2) and less over many (Vim-Ti's layer 22, r=71, 147 tokens: 16.1 against 20.1), where the tiled plan
# walks the merged sources in chunks of 32
# "compact_max_r": where every source fits that one tile and at most this many are merged, the plan in registers with
# one all-pairs count (the ranks) and every other count over the merged sources only (_plan_compact: the same lists);
# None: never. Twenty-eighth session (H200, match_schedule_gpu.py --ab "compact_max_r=None;32", call 1): Vim-Ti
# 15.0-15.7 -> 11.8-12.2 us per layer (169.7 -> 136.5 per forward), Vim-S 18.8-19.7 -> 15.8-16.4 at 128-source
# tiles, 11.6-12.0 -> 10.7-11.0 at 64 (181.9 -> 155.2 per forward); whole graphed Vim-Ti 1.158 -> 1.162, Vim-S
# 1.378-1.380 -> 1.381-1.383 (alternating processes, with the two settings below, which changed nothing); call 2, on
# another card, against the matching before this session: Vim-Ti 1.156-1.157 -> 1.160-1.161, Vim-S 1.392-1.393 ->
# 1.395-1.396.
# Tried there and dropped (no gain, code removed): the dot's rows loaded a step ahead in registers (+0.2 us per
# layer), the row norms over a 2-D accumulator reduced once (the same time); call 2: a 16-bit metric's best partners by
# one max over int32 keys (the score's bits above the destination's complement) in place of a max and a first index
# at it (the same partners; Vim-Ti 132.7 -> 133.5, Vim-S 151.4 -> 152.7 us per forward); call 4: the merge + add +
# norm of a batch element's rows by the matching's own program after its plan (one launch per merging layer, 16 rows
# a trip; the same bits as the two launches), much slower: whole merging steps Vim-Ti 329.6 -> 492.5, Vim-S 438.5 ->
# 716.2 us per forward (one program of 8 warps per image streams its rows at about half the merge + norm kernel's rate).
# "norm_lists_only": where the merge + norm kernel follows (inference), the matching writes only the two lists it
# reads (kslot, next), not dest, base, head, src, sdst: fewer stores and layout changes in the plan's last step
# (benchmarks/match_sass_cpu.py, compact plan: 32 -> 20 block barriers). Twenty-ninth session (H200, call 1,
# match_schedule_gpu.py --ab "norm_lists_only=False;True"): whole merging steps per forward Vim-Ti 328.9 -> 322.2 us,
# Vim-S 437.3 -> 432.0; whole graphed models, alternating processes, Vim-Ti 1.160-1.161 -> 1.162-1.163, Vim-S
# 1.395-1.396 -> 1.395-1.397.
# "rows_max_elems": where the plan is made in registers (one tile of sources and of destinations) and a 16-bit
# metric's source tile holds at most this many elements (tile rows x channels), the partner step loads each row of
# both sets once, whole (in two parts where the channels are not a power of two: 128 + 64 at Vim-Ti's 192, 256 +
# 128 at Vim-S's 384; no padding), sums its norm from those registers and gives the normalised rows to the dot
# (_partner_best_rows) in place of a norms pass and a dot pass in channel steps; None: never. The norms are summed
# in another order, so a near-tie may be broken otherwise than with channel steps. 128 x 192: Vim-Ti's 128-source
# tiles and Vim-S's 64-source ones (its last four merging layers); a larger tile spills on sm_90
# (benchmarks/match_sass_cpu.py: 128 x 256 and 128 x 384 use 255 registers and 432 / 768 bytes of stack; 128 x
# 192 and 64 x 384 none). Thirty-first session (H200, call 1, match_schedule_gpu.py --ab "rows_max_c=None;256", the
# key's first form, Vim-Ti): the matching 11.5-12.0 -> 10.6-11.1 us per layer (133.0 -> 123.2 per forward), whole
# merging steps 296.9 -> 288.2; whole graphed Vim-Ti, alternating processes, 1.1683 / 1.1683 -> 1.1691 / 1.1687.
# Call 7 (Vim-S, --ab "rows_max_elems=None;24576"): its four 64-source layers 10.5-10.9 -> 9.8-10.1 us (151.2 ->
# 149.1 per forward); whole graphed Vim-S the same within the rounds' spread (1.3873 / 1.3863 -> 1.3863 / 1.3871).
MATCH_CONFIG = {"fused": True, "small": MATCH_TILES[1], "large": MATCH_TILES[0], "wide": MATCH_TILES[2],
                "one_j": True, "dot_unroll": None, "one_tile_min_r": 33, "compact_max_r": 32,
                "norm_lists_only": True, "rows_max_elems": 128 * 192}
_WIDE_C = 768


def _workspace(batch: int, L: int, R: int, dev: torch.device) -> tuple:
    """One allocation for everything the plan kernels write, split into the views :func:`_match_lists`
    returns and the merge + norm kernel reads: (dest [batch, L] int64, vmax [batch * L // 2] float32, vidx
    [batch * L // 2] int32, scratch [batch * tiles * R] int32, base [batch, L - R], src [batch, R], sdst
    [batch, R], head [batch, L - R], nxt [batch, L], kslot [batch, L] int32). dest comes first so it is 8-byte
    aligned."""
    na, n_out = L // 2, L - R
    sizes = [2 * L, na, na, cdiv(na, _PLAN_TILE) * R, n_out, R, R, n_out, L, L]
    ws = torch.empty(batch * sum(sizes), device=dev, dtype=torch.int32)
    dest, vmax, vidx, scratch, base, src, sdst, head, nxt, kslot = ws.split([batch * n for n in sizes])
    return (dest.view(torch.int64).view(batch, L), vmax.view(torch.float32), vidx, scratch,
            base.view(batch, n_out), src.view(batch, R), sdst.view(batch, R), head.view(batch, n_out),
            nxt.view(batch, L), kslot.view(batch, L))


def _op_workspace(batch: int, L: int, R: int, dev: torch.device) -> tuple:
    """:func:`_workspace` with the six lists :func:`_match_lists` returns (dest, base, src, sdst, head, nxt) in
    tensors of their own: the outputs of the custom op ``rmeeto::match_plan``, which may not alias each other,
    written where they live (no copies)."""
    dest, vmax, vidx, scratch, base, src, sdst, head, nxt, kslot = _workspace(batch, L, R, dev)
    return (torch.empty_like(dest), vmax, vidx, scratch, torch.empty_like(base), torch.empty_like(src),
            torch.empty_like(sdst), torch.empty_like(head), torch.empty_like(nxt), kslot)


# Workspaces kept for the no-gradient merge (match_merge_fused), whose plan lists live only until the merge
# kernel launched right after has read them: one per (device, stream, thread, shape), so a call reuses the
# previous call's memory only behind that call's kernels in the same stream (stream order makes it safe)
# and never one another stream or thread may still be using. Allocating it per call cost an allocation and
# a dozen view ops (~15 aten calls, the larger part of a merging layer's host time in eager mode).
_workspaces: dict = {}
_MAX_WORKSPACES = 64  # a model has one shape per merging layer; more are from other models / batch sizes


def _reused_workspace(batch: int, L: int, R: int, dev: torch.device) -> Optional[tuple]:
    """The kept workspace of this shape on the current stream and thread (made on first use), or None while
    a CUDA graph is being captured (the graph's own pool must hold what its kernels write)."""
    if dev.type == "cuda":
        if torch.cuda.is_current_stream_capturing():
            return None
        stream = torch._C._cuda_getCurrentRawStream(dev.index)
    else:
        stream = 0  # CPU tensors reach the kernels only under the interpreter, which runs them in order
    key = (dev, stream, threading.get_ident(), batch, L, R)
    ws = _workspaces.get(key)
    if ws is None:
        if len(_workspaces) >= _MAX_WORKSPACES:
            # freed on the stream that allocated each one (current when it was made): the caching allocator
            # hands the memory out again only behind the kernels already queued there
            _workspaces.clear()
        ws = _workspaces[key] = _workspace(batch, L, R, dev)
    return ws


def _inference_workspace(batch: int, L: int, R: int, dev: torch.device) -> tuple:
    """The workspace of a no-gradient merge: the one kept for this shape and stream (:func:`_reused_workspace`), or
    while a CUDA graph is captured a new one (the graph's own pool)."""
    return _reused_workspace(batch, L, R, dev) or _workspace(batch, L, R, dev)


def clear_workspaces() -> None:
    """Free the workspaces kept by :func:`match_merge_fused` (a few hundred KB per merging layer and batch
    size)."""
    _workspaces.clear()


def _match_lists(metric: Tensor, cls_index: int, num_merged: int, new_cls_index: int, ordered: bool,
                 workspace: Optional[tuple] = None, norm_only: bool = False):
    """:func:`match_plan` plus the per-slot source lists of :func:`source_lists` -> (dest [batch, L] int64,
    then base, src, sdst, head, next: [batch, n] int32), all views of one workspace (``workspace``, from
    :func:`_workspace`, or a new one): for short sequences (at most ``_LONG_SOURCES`` sources) in one kernel,
    a program per batch element doing both steps (:func:`_match_kernel`, ``MATCH_CONFIG``), otherwise in two
    kernels (best partner, plan), each parallel over tiles of sources as well.

    Work per batch element of the two kernels (NA = L // 2 sources, R merged, tiles of 64 sources), and why
    the plan kernel is parallel over source tiles: at 1569 tokens (video, batch 16) a plan program per batch element did
    ~4 NA^2 = 2.5M comparisons on 16 programs (203 us, H200). Here each of the 16 x 13 = 208 programs
    (Vim-S 197 tokens, batch 128: 128 x 2) takes 32 counts over the NA keys for the merged set (registers),
    then 64 x R comparisons (64 x 88 at video, 64 x 11 at Vim-S) for ranks, slots and lists; the
    unordered layout adds 64 x NA to rank its kept sources. A rank kernel per tile followed by a slot kernel
    would do a little less arithmetic but cost one more launch (~25-50 us of host time in eager mode, which
    dominates at Vim-S shapes) and one more grid barrier. At Vim's shapes the one-launch kernel does the same
    work per batch element in one program (one launch less, and no program waits on another's partners)."""
    batch, L, C = metric.shape
    if metric.stride(2) != 1:
        metric = metric.contiguous()
    R = num_merged
    dev = metric.device
    na = L // 2
    if workspace is None:
        workspace = _workspace(batch, L, R, dev)
    dest, vmax, vidx, scratch, base, src, sdst, head, nxt, kslot = workspace
    spec = match_spec(metric, cls_index, num_merged, new_cls_index, ordered, norm_only)
    if spec is not None:
        grid, tail, meta = spec
        launch(_match_kernel, grid, dev, metric, metric.stride(0), metric.stride(1), vmax, vidx, scratch, dest, base,
               src, sdst, head, nxt, kslot, *tail, **meta)
        return dest, base, src, sdst, head, nxt
    block_a = max(16, next_pow2(na))
    tile_a, tile_b, step_c, warps, stages = PARTNER_CONFIG["long" if na > _LONG_SOURCES else "short"]
    launch(_best_partner_kernel, (batch, cdiv(na, tile_a)), dev,
           metric, metric.stride(0), metric.stride(1), vmax, vidx, L, C, cls_index,
           **_partner_meta(metric, tile_a, tile_b, step_c), num_warps=warps, num_stages=stages)
    launch(_plan_kernel, (batch, cdiv(na, _PLAN_TILE)), dev,
           vmax, vidx, scratch, dest, base, src, sdst, head, nxt, kslot, L, cls_index, new_cls_index, R, L - R,
           ORDERED=ordered, BLOCK_T=_PLAN_TILE, BLOCK_A=block_a, BLOCK_K=32,
           num_warps=4 if block_a <= 1024 else 8)
    return dest, base, src, sdst, head, nxt


def match_spec(metric: Tensor, cls_index: int, num_merged: int, new_cls_index: int, ordered: bool,
               norm_only: bool = False) -> Optional[tuple[tuple, tuple, dict]]:
    """(grid, scalar arguments after the tensors, constexprs and launch options) of the one-launch matching
    kernel for ``metric`` [batch, L, C] (unit channel stride), or None where :func:`_match_lists` takes the two
    kernels (more than ``_LONG_SOURCES`` sources, or ``MATCH_CONFIG["fused"]`` off). The kernel's leading
    arguments: metric, its batch and token strides, then the workspace's vmax, vidx, scratch, dest, base, src,
    sdst, head, nxt, kslot. ``norm_only`` (inference callers of the merge + norm kernel): only kslot and nxt are
    written, where ``MATCH_CONFIG["norm_lists_only"]`` allows it."""
    batch, L, C = metric.shape
    na = L // 2
    if not (MATCH_CONFIG["fused"] and na <= _LONG_SOURCES):
        return None
    block_a = max(16, next_pow2(na))
    size = "small" if na <= 64 else "wide" if C >= _WIDE_C else "large"
    tile_a, tile_b, step_c, warps, unroll, plan_t = MATCH_CONFIG[size]
    dot_unroll = MATCH_CONFIG.get("dot_unroll") or (2 if size == "wide" else 1)
    meta = dict(ORDERED=ordered, **_partner_meta(metric, tile_a, tile_b, step_c), PLAN_T=min(plan_t, block_a),
                BLOCK_A=block_a, BLOCK_K=32, UNROLL=unroll, DOT_UNROLL=dot_unroll, num_warps=warps, num_stages=1,
                NORM_ONLY=bool(norm_only and MATCH_CONFIG["norm_lists_only"]), **pdl_meta())
    meta["ONE_TILE"], meta["RB"] = _one_tile(na, tile_a, num_merged)
    rows_max = MATCH_CONFIG["rows_max_elems"]
    if (meta["ONE_TILE"] and meta["ONE_J"] and rows_max is not None and tile_a * C <= rows_max
            and metric.element_size() == 2):
        main = max(16, 1 << (C.bit_length() - 1))  # the largest power of two in C, then one for the rest
        meta.update(ROWS=True, BLOCK_C=main, BLOCK_C2=0 if C <= main else max(16, next_pow2(C - main)))
    return (batch,), (L, C, cls_index, new_cls_index, num_merged, L - num_merged), meta


def _one_tile(na: int, tile_a: int, num_merged: int) -> tuple[bool, int]:
    """(whether the one-launch kernel makes its plan in registers, RB): where every source fits its one tile,
    the compact plan over RB slots for up to ``MATCH_CONFIG["compact_max_r"]`` merged sources (RB = 0: the
    all-pairs plan, for at least ``MATCH_CONFIG["one_tile_min_r"]``); else the tiled plan."""
    if na > tile_a:
        return False, 0
    max_r, min_r = MATCH_CONFIG["compact_max_r"], MATCH_CONFIG["one_tile_min_r"]
    if max_r is not None and num_merged <= max_r:
        return True, max(16, next_pow2(num_merged))
    return min_r is not None and num_merged >= min_r, 0


def _partner_meta(metric: Tensor, tile_a: int, tile_b: int, step_c: int) -> dict:
    """The partner step's constexprs, the same in both matching paths: tiles of ``tile_a`` sources by ``tile_b``
    destinations and channel steps of ``step_c`` (capped at the channels' power of two), IEEE dots for float32
    metrics, norms in chunks of up to 32 channels, and ONE_J when every destination fits one tile (both sets'
    row norms in one loop)."""
    batch, L, C = metric.shape
    c2 = next_pow2(C)
    return dict(BLOCK_T=tile_a, BLOCK_C=max(16, min(step_c, c2)), BLOCK_J=tile_b,
                ONE_J=MATCH_CONFIG["one_j"] and (L - 1) // 2 <= tile_b, IEEE=metric.dtype == torch.float32,
                NORM_C=max(16, min(32, c2)))


@library_op("match_plan")
def _match_plan_op(metric: Tensor, cls_index: int, num_merged: int, new_cls_index: int,
                   ordered: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    # a custom op's outputs may not alias each other (the eager lists are views of one workspace): here the kernels
    # write the six outputs into tensors of their own. Every entry of each is written (``next`` at merged sources
    # the next source of their list, at destinations the list's head, -1 elsewhere), so the outputs are
    # deterministic, as an op's must be
    batch, L, _ = metric.shape
    return _match_lists(metric, cls_index, num_merged, new_cls_index, ordered,
                        _op_workspace(batch, L, num_merged, metric.device))


@torch.library.register_fake(_match_plan_op)
def _(metric, cls_index, num_merged, new_cls_index, ordered):
    batch, L, _ = metric.shape
    n_out = L - num_merged
    i32 = dict(dtype=torch.int32)
    return (metric.new_empty(batch, L, dtype=torch.int64), metric.new_empty(batch, n_out, **i32),
            metric.new_empty(batch, num_merged, **i32), metric.new_empty(batch, num_merged, **i32),
            metric.new_empty(batch, n_out, **i32), metric.new_empty(batch, L, **i32))


def _plan_lists(metric: Tensor, cls_index: int, num_merged: int, new_cls_index: int, ordered: bool):
    """:func:`_match_lists` (the custom op ``rmeeto::match_plan`` while torch.compile traces)."""
    args = (int(cls_index), int(num_merged), int(new_cls_index), bool(ordered))
    if torch.compiler.is_compiling():
        return _match_plan_op(metric.detach(), *args)  # integer outputs: nothing to differentiate
    return _match_lists(metric, *args)


def match_plan(metric: Tensor, cls_index: int, num_merged: int, new_cls_index: int, ordered: bool):
    """Cosine bipartite matching (best partner) and the merge plan of every batch element: one kernel up to
    256 sources (a program per batch element), else two (inverse row norms and best partner per tile of
    sources; the plan per tile of sources).

    metric [batch, L, c] -> (dest [batch, L] int64, base [batch, L - r] int32, src [batch, r] int32,
    sdst [batch, r] int32): the output slot of every token, the kept token of every slot, the merged sources
    in plan order and their slots. ``num_merged`` must already be clamped to ``(L - 1) // 2`` and
    ``new_cls_index`` come from :func:`rmeeto.merge.plan_cls_index`. The plan is the one
    :func:`rmeeto.merge.bipartite_match` makes (rows times their float32 inverse norm, rounded to the metric's dtype,
    scores rounded to it, first partner on ties, sources ranked by a stable sort) up to the summation order
    of the scores. No gradient flows through a plan; under torch.compile it is the opaque op
    ``rmeeto::match_plan``.
    """
    return _plan_lists(metric, cls_index, num_merged, new_cls_index, ordered)[:4]


def _inference_lists(metric: Tensor, cls_index: int, num_merged: int, new_cls_index: int, ordered: bool):
    """The lists the merge kernels read (base, head, next, kslot), made in the workspace kept for this shape
    and stream (no gradient: they live only until the merge kernel queued next has read them)."""
    batch, L, _ = metric.shape
    workspace = _inference_workspace(batch, L, num_merged, metric.device)
    _match_lists(metric, cls_index, num_merged, new_cls_index, ordered, workspace)
    return workspace[4], workspace[7], workspace[8], workspace[9]


def match_merge_fused(hidden: Tensor, residual: Tensor, size: Optional[Tensor], metric: Tensor, cls_index: int,
                      num_merged: int, new_cls_index: int, ordered: bool):
    """The whole default merging step in two kernel launches (three past 256 sources): :func:`match_plan` on
    ``metric`` (cosine, best partner) with the per-slot source lists, then the size-weighted merge of both
    streams, each output slot walking only its own sources -> ((hidden, residual), new_size).

    Without a gradient to compute (inference) the plan goes to a workspace kept per shape and stream
    (:func:`_reused_workspace`): the host work of a call is then the launches and the three output
    allocations, no other tensor op and no host sync."""
    if torch.compiler.is_compiling() or (
            torch.is_grad_enabled() and (hidden.requires_grad or residual.requires_grad)):
        # the custom ops, or the autograd function, which keeps the destination map for its backward
        dest, base, _src, _sdst, head, nxt = _plan_lists(metric, cls_index, num_merged, new_cls_index, ordered)
        h, r, s = _merge(hidden, residual, size, dest, base, head, nxt)
        return (h, r), s
    base, head, nxt, _kslot = _inference_lists(metric, cls_index, num_merged, new_cls_index, ordered)
    h, r, s = _merge_fwd(hidden, residual, size, base, head, nxt)
    return (h, r), s


def match_merge_add_norm(hidden: Tensor, residual: Tensor, size: Optional[Tensor], metric: Tensor, cls_index: int,
                         num_merged: int, new_cls_index: int, ordered: bool, weight: Tensor, eps: float):
    """Inference only: :func:`match_merge_fused` and the residual add + RMSNorm that follows it in a Vim block
    (:func:`rmeeto.ops.norm.add_rms_norm`, no drop path) in two launches (three past 256 sources), the merged
    streams never written -> (residual_out float32, normed in hidden's dtype, new_size), the values of the two
    steps run one after the other. ``residual`` must be float32; no gradient can flow (raises otherwise)."""
    if torch.is_grad_enabled() and (hidden.requires_grad or residual.requires_grad or weight.requires_grad):
        raise RuntimeError("match_merge_add_norm is inference only: call it under torch.no_grad()")
    if residual.dtype != torch.float32:
        raise ValueError(f"match_merge_add_norm needs a float32 residual, got {residual.dtype}")
    args = (int(cls_index), int(num_merged), int(new_cls_index), bool(ordered), weight, float(eps))
    if torch.compiler.is_compiling():
        return _match_merge_add_norm_op(hidden, residual, size, metric, *args)
    batch, L, _ = metric.shape
    return _match_merge_add_norm(hidden, residual, size, metric, *args,
                                 _inference_workspace(batch, L, num_merged, metric.device))


def _match_merge_add_norm(hidden: Tensor, residual: Tensor, size: Optional[Tensor], metric: Tensor, cls_index: int,
                          num_merged: int, new_cls_index: int, ordered: bool, weight: Tensor, eps: float,
                          workspace: Optional[tuple] = None):
    """:func:`match_merge_add_norm`'s launches, the plan lists in ``workspace``, or without one in a workspace of
    the call's own: what the traced ops take (``rmeeto::match_merge_add_norm``,
    ``rmeeto::merging_block_inference``), since under Inductor's CUDA graphs ("reduce-overhead") even the warm-up
    runs allocate from the graph's pool, which must hold no tensor that outlives a run but its outputs."""
    if workspace is None:
        workspace = _workspace(metric.shape[0], metric.shape[1], num_merged, metric.device)
    _match_lists(metric, cls_index, num_merged, new_cls_index, ordered, workspace, norm_only=True)
    nxt, kslot = workspace[8], workspace[9]
    return _merge_norm_fwd(hidden, residual, size, kslot, nxt, hidden.shape[1] - num_merged, weight, eps)


# torch.compile traces an inference merging step as this one op: the same two launches as eager mode (where
# tracing the general path gives the matching op, the merge op and the norm op, with Inductor's kernels between),
# its plan lists in a workspace of the call's own, never a kept one (see _match_merge_add_norm)
@library_op("match_merge_add_norm")
def _match_merge_add_norm_op(hidden: Tensor, residual: Tensor, size: Optional[Tensor], metric: Tensor,
                             cls_index: int, num_merged: int, new_cls_index: int, ordered: bool, weight: Tensor,
                             eps: float) -> tuple[Tensor, Tensor, Tensor]:
    return _match_merge_add_norm(hidden, residual, size, metric, cls_index, num_merged, new_cls_index, ordered,
                                 weight, eps)


@torch.library.register_fake(_match_merge_add_norm_op)
def _(hidden, residual, size, metric, cls_index, num_merged, new_cls_index, ordered, weight, eps):
    batch, L, C = hidden.shape
    n_out = L - num_merged
    f32 = dict(dtype=torch.float32)
    return (hidden.new_empty(batch, n_out, C, **f32), hidden.new_empty(batch, n_out, C),
            hidden.new_empty(batch, n_out, 1, **f32))


class MergeNormPlan:
    """:func:`match_merge_add_norm` for one signature (shapes, strides and dtypes of hidden, residual and sizes,
    class-token index, merge settings, norm weight), its two launches prepared once (grids, scalar arguments,
    constexprs: :func:`match_spec`, :func:`merge_norm_spec`, launched through
    :class:`rmeeto.ops.triton._launch.Launcher`): an eager merging layer's host work is then the workspace
    lookup, three allocations and two launches. The metric is ``hidden`` (unit channel stride), the sizes float32
    and contiguous or None, the residual float32, the one-launch matching (:func:`match_spec` not None): the
    caller (:class:`rmeeto.merge.MergingBlock`) checks these once per signature. Same kernels and arguments as
    :func:`match_merge_add_norm`: the same bits. Holds no tensor."""

    def __init__(self, num_merged: int, cls_index: int, new_cls_index: int, ordered: bool, eps: float):
        self.num_merged, self.cls_index, self.new_cls_index = num_merged, cls_index, new_cls_index
        self.ordered, self.eps = bool(ordered), float(eps)
        self.match = self.merge = None
        self.strides = None

    def __call__(self, hidden: Tensor, residual: Tensor, size: Optional[Tensor], weight: Tensor
                 ) -> tuple[Tensor, Tensor, Tensor]:
        """-> (residual_out [batch, L - r, C] float32, normed in hidden's dtype, size [batch, L - r, 1] float32)."""
        batch, L, C = hidden.shape
        R = self.num_merged
        dev = hidden.device
        dest, vmax, vidx, scratch, base, src, sdst, head, nxt, kslot = _inference_workspace(batch, L, R, dev)
        if self.match is None:
            grid, tail, meta = match_spec(hidden, self.cls_index, R, self.new_cls_index, self.ordered, norm_only=True)
            self.match = Launcher(_match_kernel, grid, dev, tail, meta)
            self.strides = (hidden.stride(0), hidden.stride(1))
        s0, s1 = self.strides
        self.match(hidden, s0, s1, vmax, vidx, scratch, dest, base, src, sdst, head, nxt, kslot)
        num_out = L - R
        r_out = torch.empty(batch, num_out, C, device=dev, dtype=torch.float32)
        y = torch.empty(batch, num_out, C, device=dev, dtype=hidden.dtype)
        s_out = torch.empty(batch, num_out, 1, device=dev, dtype=torch.float32)
        if self.merge is None:
            grid, tail, meta = merge_norm_spec(hidden, residual, size is not None, num_out, self.eps)
            self.merge = Launcher(_merge_norm_kernel, grid, dev, tail, meta)
        self.merge(hidden, residual, size if size is not None else hidden, kslot, nxt, weight, r_out, y, s_out)
        return r_out, y, s_out


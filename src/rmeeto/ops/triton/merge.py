"""Fused token merging for CUDA: the matching and the size-weighted merge of both streams in four kernels.

:func:`rmeeto.merge.bipartite_match` plus :func:`rmeeto.merge.merge_streams` in PyTorch are some forty small
kernels per merging layer (gathers, norms, a matmul, max, argsort, index arithmetic, then a chain of cat /
gather / scatter_reduce / divide / cast over a packed float32 tensor); on a GPU they cost as much time as the
merge saves. Here it is four:

1. :func:`match_plan` (three small kernels) takes inverse row norms, scores sources against destinations
   with ``tl.dot`` (rounded to the metric's dtype, as the PyTorch matmul returns them), takes each source's
   best partner, ranks the sources with a stable descending order (one program per batch element), and writes
   the plan as token lists: the output slot of every input token (the destination map), the kept token of
   every slot, and the merged sources with their slots. No sort call, no host sync, static shapes.
2. The merge kernel reads every token of both streams once and writes each output token once:

       out[p] = sum_{t -> p} x[t] * s[t] / sum_{t -> p} s[t]      (s = sizes, 1 before the first merge)

   each slot adding its kept token, then the sources routed to it in plan order (fixed order: deterministic).

The backward is a gather: dx[t] = dout[p(t)] * s[t] / s_out[p(t)] (sizes carry no gradient). Only the
default merge (reduce "sum", not pruning) takes this path; plans for other distances or partner ranks are
made in PyTorch and turned into the same token lists (:func:`destination_map`), everything else stays in
PyTorch.
"""

from __future__ import annotations

from typing import Optional

import torch

from rmeeto.ops.triton._launch import launch

Tensor = torch.Tensor

try:
    import triton
    import triton.language as tl

    _HAS_TRITON = True
except Exception:
    triton = None
    tl = None
    _HAS_TRITON = False

__all__ = ["destination_map", "match_plan", "match_merge_fused", "merge_streams_fused", "is_available"]


_available: Optional[bool] = None


def is_available() -> bool:
    """True when Triton imports and a CUDA device is present (asked once: the merge asks on every forward)."""
    global _available
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
    def _inv_norm_kernel(m_ptr, s_mb, s_ml, inv_ptr, L, C, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
        """inv[b, t] = 1 / max(||metric[b, t]||, 1e-12) in float32 (IEEE sqrt and division, as PyTorch's)."""
        b = tl.program_id(0).to(tl.int64)
        t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
        offs_c = tl.arange(0, BLOCK_C)
        mt = t[:, None] < L
        row = m_ptr + b * s_mb + t[:, None] * s_ml
        acc = tl.zeros([BLOCK_T], tl.float32)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + offs_c[None, :]
            x = tl.load(row + c, mask=mt & (c < C), other=0.0).to(tl.float32)
            acc += tl.sum(x * x, axis=1)
        tl.store(inv_ptr + b * L + t, tl.div_rn(1.0, tl.maximum(tl.sqrt_rn(acc), 1e-12)), mask=t < L)

    @triton.jit
    def _best_partner_kernel(m_ptr, s_mb, s_ml, inv_ptr, vmax_ptr, vidx_ptr, L, C, cls,
                             IEEE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
        """For a tile of sources (even class-free positions): scores against every destination (odd positions)
        of the rows normalised in float32 and rounded to the metric's dtype, the scores rounded to it too (as
        the PyTorch matmul returns them), and the best one (first on ties)."""
        b = tl.program_id(0).to(tl.int64)
        T = L - 1
        NA = (T + 1) // 2
        NB = T // 2
        offs = tl.arange(0, BLOCK_T)
        offs_c = tl.arange(0, BLOCK_C)
        i = tl.program_id(1) * BLOCK_T + offs
        qa = 2 * i
        ta = qa + (qa >= cls).to(tl.int32)
        ma = i < NA
        rows = m_ptr + b * s_mb
        inv_a = tl.load(inv_ptr + b * L + ta, mask=ma, other=0.0)[:, None]
        best = tl.full([BLOCK_T], float("-inf"), tl.float32)
        best_j = tl.zeros([BLOCK_T], tl.int32)
        for j0 in range(0, NB, BLOCK_T):
            j = j0 + offs
            qb = 2 * j + 1
            tb = qb + (qb >= cls).to(tl.int32)
            mb = j < NB
            inv_b = tl.load(inv_ptr + b * L + tb, mask=mb, other=0.0)[:, None]
            s = tl.zeros([BLOCK_T, BLOCK_T], tl.float32)
            for c0 in range(0, C, BLOCK_C):
                c = c0 + offs_c[None, :]
                xa = tl.load(rows + ta[:, None] * s_ml + c, mask=ma[:, None] & (c < C), other=0.0)
                xb = tl.load(rows + tb[:, None] * s_ml + c, mask=mb[:, None] & (c < C), other=0.0)
                xa = (xa.to(tl.float32) * inv_a).to(m_ptr.dtype.element_ty)
                xb = (xb.to(tl.float32) * inv_b).to(m_ptr.dtype.element_ty)
                if IEEE:
                    s = tl.dot(xa, tl.trans(xb), s, input_precision="ieee")
                else:
                    s = tl.dot(xa, tl.trans(xb), s)
            s = s.to(m_ptr.dtype.element_ty).to(tl.float32)
            s = tl.where(mb[None, :], s, float("-inf"))
            tile_best = tl.max(s, axis=1)
            tile_j = tl.min(tl.where(s == tile_best[:, None], j[None, :], 2147483647), axis=1)
            better = tile_best > best
            best = tl.where(better, tile_best, best)
            best_j = tl.where(better, tile_j, best_j)
        tl.store(vmax_ptr + b * NA + i, best, mask=ma)
        tl.store(vidx_ptr + b * NA + i, best_j, mask=ma)

    @triton.jit
    def _plan_kernel(
        vmax_ptr, vidx_ptr, rank_ptr, dest_ptr, base_ptr, src_ptr, sdst_ptr,
        L, cls, new_cls, R, L_out,
        ORDERED: tl.constexpr, BLOCK_T: tl.constexpr,
    ):
        """The plan of one batch element from every source's best score and partner (one program per element):
        rank the sources (descending, ties by index: a stable sort; the rank is scratch in global memory,
        read back after a block barrier), then the R best merge: output slot of every token, the kept token
        of every slot, the merged sources in rank order and their slots."""
        b = tl.program_id(0).to(tl.int64)
        T = L - 1
        NA = (T + 1) // 2
        NB = T // 2
        offs = tl.arange(0, BLOCK_T)

        # ranks (stable descending order of the best scores)
        for i0 in range(0, NA, BLOCK_T):
            i = i0 + offs
            ma = i < NA
            vi = tl.load(vmax_ptr + b * NA + i, mask=ma, other=float("-inf"))
            rank = tl.zeros([BLOCK_T], tl.int32)
            for j0 in range(0, NA, BLOCK_T):
                j = j0 + offs
                vj = tl.load(vmax_ptr + b * NA + j, mask=j < NA, other=float("-inf"))
                ahead = (vj[None, :] > vi[:, None]) | ((vj[None, :] == vi[:, None]) & (j[None, :] < i[:, None]))
                ahead = ahead & (j[None, :] < NA)
                rank += tl.sum(ahead.to(tl.int32), axis=1)
            tl.store(rank_ptr + b * NA + i, rank, mask=ma)
        tl.debug_barrier()

        # slots. Index i of a tile is source i and destination i (there are never more destinations).
        n_unm = NA - R
        for i0 in range(0, NA, BLOCK_T):
            i = i0 + offs
            ma = i < NA
            mb = i < NB
            rank = tl.load(rank_ptr + b * NA + i, mask=ma, other=0)
            merged = (rank < R) & ma
            dj = tl.load(vidx_ptr + b * NA + i, mask=ma, other=0)
            qa = 2 * i
            ta = qa + (qa >= cls).to(tl.int32)
            qb = 2 * i + 1
            tb = qb + (qb >= cls).to(tl.int32)
            if ORDERED:
                # merged sources before source i, up to destination i, up to source i's destination
                n_lt = tl.zeros([BLOCK_T], tl.int32)
                n_le = tl.zeros([BLOCK_T], tl.int32)
                n_at = tl.zeros([BLOCK_T], tl.int32)
                for j0 in range(0, NA, BLOCK_T):
                    j = j0 + offs
                    rj = tl.load(rank_ptr + b * NA + j, mask=j < NA, other=0)
                    mj = ((rj < R) & (j < NA))[None, :]
                    n_lt += tl.sum((mj & (j[None, :] < i[:, None])).to(tl.int32), axis=1)
                    n_le += tl.sum((mj & (j[None, :] <= i[:, None])).to(tl.int32), axis=1)
                    n_at += tl.sum((mj & (j[None, :] <= dj[:, None])).to(tl.int32), axis=1)
                ra = 2 * i - n_lt
                rb = 2 * i + 1 - n_le
                rd = 2 * dj + 1 - n_at
                slot_a = ra + (ra >= new_cls).to(tl.int32)
                slot_b = rb + (rb >= new_cls).to(tl.int32)
                slot_d = rd + (rd >= new_cls).to(tl.int32)
            else:
                k = rank - R
                slot_a = k + (k >= new_cls).to(tl.int32)
                slot_b = n_unm + 1 + i
                slot_d = n_unm + 1 + dj
            tok_slot = tl.where(merged, slot_d, slot_a)
            tl.store(dest_ptr + b * L + ta, tok_slot.to(tl.int64), mask=ma)
            tl.store(dest_ptr + b * L + tb, slot_b.to(tl.int64), mask=mb)
            tl.store(base_ptr + b * L_out + slot_a, ta, mask=ma & (rank >= R))
            tl.store(base_ptr + b * L_out + slot_b, tb, mask=mb)
            tl.store(src_ptr + b * R + rank, ta, mask=merged)
            tl.store(sdst_ptr + b * R + rank, slot_d, mask=merged)
        first = offs == 0
        tl.store(dest_ptr + b * L + cls + offs, tl.full([BLOCK_T], new_cls, tl.int64), mask=first)
        tl.store(base_ptr + b * L_out + new_cls + offs, tl.full([BLOCK_T], cls, tl.int32), mask=first)

    @triton.jit
    def _merge_fwd_kernel(
        h_ptr, r_ptr, s_ptr, base_ptr, src_ptr, sdst_ptr, ho_ptr, ro_ptr, so_ptr,
        L, L_out, C, R,
        s_h_b, s_h_l, s_r_b, s_r_l,
        HAS_SIZE: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        """Output token p of batch b: its kept input token plus every merged source whose destination is p
        (sources visited in plan order, so the sum order is fixed). A vectorised scan of the slots (masked tile
        loads of the hits) measured 73 us per call against this loop's 27 us (Vim-S, H100)."""
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
        wsum = w
        for k in range(0, R):
            if tl.load(sdst_ptr + b * R + k) == p:
                t = tl.load(src_ptr + b * R + k)
                if HAS_SIZE:
                    w = tl.load(s_ptr + b * L + t)
                else:
                    w = 1.0
                acc_h += tl.load(h_ptr + b * s_h_b + t * s_h_l + offs_c, mask=mc, other=0.0).to(tl.float32) * w
                acc_r += tl.load(r_ptr + b * s_r_b + t * s_r_l + offs_c, mask=mc, other=0.0).to(tl.float32) * w
                wsum += w
        o = (b * L_out + p) * C + offs_c
        tl.store(ho_ptr + o, (acc_h / wsum).to(ho_ptr.dtype.element_ty), mask=mc)
        tl.store(ro_ptr + o, (acc_r / wsum).to(ro_ptr.dtype.element_ty), mask=mc)
        tl.store(so_ptr + b * L_out + p, wsum)


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


def _source_tokens(plan) -> Tensor:
    """Original token indices of the merged sources, in plan order: [batch, r] int64."""
    q = plan.src_idx[..., 0] * 2  # class-free position of source j is 2j
    return q + (q >= plan.cls_index).long()


def _merge_fwd(hidden: Tensor, residual: Tensor, size: Optional[Tensor], base: Tensor, src: Tensor,
               sdst: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Merge launcher: hidden, residual [batch, L, C] (unit channel stride), size [batch, L, 1] or None, the plan's
    token lists -> (hidden [batch, L - r, C], residual [batch, L - r, C], size [batch, L - r, 1] float32)."""
    batch, L, C = hidden.shape
    num_out = base.shape[1]
    if hidden.stride(2) != 1:
        hidden = hidden.contiguous()
    if residual.stride(2) != 1:
        residual = residual.contiguous()
    if size is None:
        s = hidden  # dummy, never read (HAS_SIZE is off)
    elif size.dtype == torch.float32 and size.is_contiguous():
        s = size  # [batch, L, 1] is [batch, L] in memory
    else:
        s = size.reshape(batch, L).float().contiguous()
    dev = hidden.device
    h_out = torch.empty(batch, num_out, C, device=dev, dtype=hidden.dtype)
    r_out = torch.empty(batch, num_out, C, device=dev, dtype=residual.dtype)
    s_out = torch.empty(batch, num_out, 1, device=dev, dtype=torch.float32)
    block_c = triton.next_power_of_2(C)
    launch(
        _merge_fwd_kernel, (batch, num_out), dev,
        hidden, residual, s, base, src, sdst, h_out, r_out, s_out,
        L, num_out, C, src.shape[1], hidden.stride(0), hidden.stride(1), residual.stride(0), residual.stride(1),
        HAS_SIZE=size is not None, BLOCK_C=block_c, num_warps=4 if block_c >= 512 else 2,
    )
    return h_out, r_out, s_out


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
    """Forward: the merge kernel over the token lists of a plan. Backward: a gather over the destination map.
    The eager twin of the custom op ``rmeeto::merge_fused`` (same launcher and backward)."""

    @staticmethod
    def forward(ctx, hidden, residual, size, dest, base, src, sdst):
        h_out, r_out, s_out = _merge_fwd(hidden, residual, size, base, src, sdst)
        ctx.save_for_backward(size, dest, s_out)
        ctx.dtypes = (hidden.dtype, residual.dtype)
        ctx.mark_non_differentiable(s_out)
        return h_out, r_out, s_out

    @staticmethod
    def backward(ctx, d_h, d_r, _d_s):
        size, dest, s_out = ctx.saved_tensors
        return _merge_bwd(d_h, d_r, size, dest, s_out, *ctx.dtypes) + (None, None, None, None, None)


@torch.library.custom_op("rmeeto::merge_fused", mutates_args=())
def _merge_op(hidden: Tensor, residual: Tensor, size: Optional[Tensor], dest: Tensor, base: Tensor, src: Tensor,
              sdst: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return _merge_fwd(hidden, residual, size, base, src, sdst)


@_merge_op.register_fake
def _(hidden, residual, size, dest, base, src, sdst):
    batch, _, C = hidden.shape
    num_out = base.shape[1]
    return (hidden.new_empty(batch, num_out, C), residual.new_empty(batch, num_out, C),
            hidden.new_empty(batch, num_out, 1, dtype=torch.float32))


def _merge_setup_context(ctx, inputs, output):
    hidden, residual, size, dest, base, src, sdst = inputs
    ctx.save_for_backward(size, dest, output[2])
    ctx.dtypes = (hidden.dtype, residual.dtype)
    ctx.mark_non_differentiable(output[2])  # sizes carry no gradient (as in _FusedMerge)


def _merge_backward(ctx, d_h, d_r, _d_s):
    size, dest, s_out = ctx.saved_tensors
    return _merge_bwd(d_h, d_r, size, dest, s_out, *ctx.dtypes) + (None, None, None, None, None)


_merge_op.register_autograd(_merge_backward, setup_context=_merge_setup_context)


def _merge(hidden, residual, size, dest, base, src, sdst) -> tuple[Tensor, Tensor, Tensor]:
    """The custom op while torch.compile traces, else the autograd function, else (no gradient needed) the
    launcher."""
    if torch.compiler.is_compiling():
        return _merge_op(hidden, residual, size, dest, base, src, sdst)
    if torch.is_grad_enabled() and (hidden.requires_grad or residual.requires_grad):
        return _FusedMerge.apply(hidden, residual, size, dest, base, src, sdst)
    return _merge_fwd(hidden, residual, size, base, src, sdst)


def merge_streams_fused(hidden: Tensor, residual: Tensor, size: Optional[Tensor], plan, ordered: bool):
    """Size-weighted merge of the two streams with one fused kernel, for a plan made in PyTorch
    (:func:`rmeeto.merge.bipartite_match`, any distance / partner rank) -> ((hidden, residual), new_size).
    Same result as ``merge_streams([hidden, residual], size, plan, "sum")`` up to float rounding."""
    L = hidden.shape[1]
    num_out = L - plan.src_idx.shape[1]
    dest = destination_map(plan, L, ordered)
    base, src, sdst = _token_lists(dest, _source_tokens(plan), num_out)
    h, r, s = _merge(hidden, residual, size, dest, base, src, sdst)
    return (h, r), s


def _match_plan(metric: Tensor, cls_index: int, num_merged: int, new_cls_index: int,
                ordered: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Launcher of the three matching kernels (see :func:`match_plan`)."""
    batch, L, C = metric.shape
    if metric.stride(2) != 1:
        metric = metric.contiguous()
    R = num_merged
    dev = metric.device
    na = L // 2
    inv = torch.empty(batch, L, device=dev, dtype=torch.float32)
    vmax = torch.empty(batch, na, device=dev, dtype=torch.float32)
    vidx = torch.empty(batch, na, device=dev, dtype=torch.int32)
    rank = torch.empty(batch, na, device=dev, dtype=torch.int32)
    dest = torch.empty(batch, L, device=dev, dtype=torch.int64)
    base = torch.empty(batch, L - R, device=dev, dtype=torch.int32)
    src = torch.empty(batch, R, device=dev, dtype=torch.int32)
    sdst = torch.empty(batch, R, device=dev, dtype=torch.int32)
    c_pow2 = triton.next_power_of_2(C)
    tile = 64
    s_b, s_l = metric.stride(0), metric.stride(1)
    launch(_inv_norm_kernel, (batch, (L + 31) // 32), dev,
           metric, s_b, s_l, inv, L, C, BLOCK_T=32, BLOCK_C=max(16, min(64, c_pow2)), num_warps=4)
    launch(_best_partner_kernel, (batch, (na + tile - 1) // tile), dev,
           metric, s_b, s_l, inv, vmax, vidx, L, C, cls_index,
           IEEE=metric.dtype == torch.float32, BLOCK_T=tile, BLOCK_C=max(16, min(32, c_pow2)),
           num_warps=8, num_stages=2)  # 122 registers on sm_90 (64-channel steps at 4 warps spill)
    launch(_plan_kernel, (batch,), dev,
           vmax, vidx, rank, dest, base, src, sdst, L, cls_index, new_cls_index, R, L - R,
           ORDERED=ordered, BLOCK_T=tile, num_warps=4)
    return dest, base, src, sdst


@torch.library.custom_op("rmeeto::match_plan", mutates_args=())
def _match_plan_op(metric: Tensor, cls_index: int, num_merged: int, new_cls_index: int,
                   ordered: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _match_plan(metric, cls_index, num_merged, new_cls_index, ordered)


@_match_plan_op.register_fake
def _(metric, cls_index, num_merged, new_cls_index, ordered):
    batch, L, _ = metric.shape
    return (metric.new_empty(batch, L, dtype=torch.int64), metric.new_empty(batch, L - num_merged, dtype=torch.int32),
            metric.new_empty(batch, num_merged, dtype=torch.int32),
            metric.new_empty(batch, num_merged, dtype=torch.int32))


def match_plan(metric: Tensor, cls_index: int, num_merged: int, new_cls_index: int, ordered: bool):
    """Cosine bipartite matching (best partner) and the merge plan of every batch element, in three kernels
    (inverse row norms; best partner per tile of sources; ranks and slots per batch element).

    metric [batch, L, c] -> (dest [batch, L] int64, base [batch, L - r] int32, src [batch, r] int32,
    sdst [batch, r] int32): the output slot of every token, the kept token of every slot, the merged sources
    in plan order and their slots. ``num_merged`` must already be clamped to ``(L - 1) // 2`` and
    ``new_cls_index`` come from :func:`rmeeto.merge.plan_cls_index`. The plan is the one
    :func:`rmeeto.merge.bipartite_match` makes (rows times their float32 inverse norm, rounded to the metric's dtype,
    scores rounded to it, first partner on ties, sources ranked by a stable sort) up to the summation order
    of the scores. No gradient flows through a plan; under torch.compile it is the opaque op
    ``rmeeto::match_plan``.
    """
    args = (int(cls_index), int(num_merged), int(new_cls_index), bool(ordered))
    if torch.compiler.is_compiling():
        return _match_plan_op(metric.detach(), *args)  # integer outputs: nothing to differentiate
    return _match_plan(metric, *args)


def match_merge_fused(hidden: Tensor, residual: Tensor, size: Optional[Tensor], metric: Tensor, cls_index: int,
                      num_merged: int, new_cls_index: int, ordered: bool):
    """The whole default merging step in two kernels: :func:`match_plan` on ``metric`` (cosine, best
    partner), then the size-weighted merge of both streams -> ((hidden, residual), new_size)."""
    dest, base, src, sdst = match_plan(metric, cls_index, num_merged, new_cls_index, ordered)
    h, r, s = _merge(hidden, residual, size, dest, base, src, sdst)
    return (h, r), s

"""Fused size-weighted token merge for CUDA: one Triton pass over the hidden and residual streams.

:func:`rmeeto.merge.merge_streams` in PyTorch packs both streams with their sizes into one float32 tensor and
runs a chain of cat / gather / scatter_reduce / gather / cat / divide / cast over it: about ten passes over a
[batch, L, 2C + 1] float32 tensor per merging layer, which on a GPU cost as much time as the merge saves.
Here the plan becomes a destination map (the output position of every input token, computed with a few
small integer ops on [batch, L] tensors, no sort and no host sync; the sum order is fixed and the result
deterministic: each output slot adds its kept token, then the sources
routed to it in plan order), and one kernel reads every token of both streams once and writes each output
token once:

    out[p] = sum_{t -> p} x[t] * s[t] / sum_{t -> p} s[t]      (s = sizes, 1 before the first merge)

The backward is a gather: dx[t] = dout[p(t)] * s[t] / s_out[p(t)] (sizes carry no gradient). Only the
default merge (reduce "sum", not pruning) takes this path; everything else stays in PyTorch.
"""

from __future__ import annotations

from typing import Optional

import torch

Tensor = torch.Tensor

try:
    import triton
    import triton.language as tl

    _HAS_TRITON = True
except Exception:
    triton = None
    tl = None
    _HAS_TRITON = False

__all__ = ["destination_map", "merge_streams_fused", "is_available"]


def is_available() -> bool:
    return _HAS_TRITON and torch.cuda.is_available()


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
    def _merge_fwd_kernel(
        h_ptr, r_ptr, s_ptr, base_ptr, src_ptr, sdst_ptr, ho_ptr, ro_ptr, so_ptr,
        L, L_out, C, R,
        s_h_b, s_h_l, s_r_b, s_r_l,
        HAS_SIZE: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        """Output token p of batch b: its kept input token plus every merged source whose destination is p
        (sources visited in plan order, so the sum order is fixed)."""
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


class _FusedMerge(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, residual, size, dest, src_tok, num_out):
        batch, L, C = hidden.shape
        base, src, sdst = _token_lists(dest, src_tok, num_out)
        if hidden.stride(2) != 1:
            hidden = hidden.contiguous()
        if residual.stride(2) != 1:
            residual = residual.contiguous()
        s = size.reshape(batch, L).float().contiguous() if size is not None else hidden  # dummy when absent
        h_out = torch.empty(batch, num_out, C, device=hidden.device, dtype=hidden.dtype)
        r_out = torch.empty(batch, num_out, C, device=residual.device, dtype=residual.dtype)
        s_out = torch.empty(batch, num_out, 1, device=hidden.device, dtype=torch.float32)
        block_c = triton.next_power_of_2(C)
        with torch.cuda.device(hidden.device):
            _merge_fwd_kernel[(batch, num_out)](
                hidden, residual, s, base, src, sdst, h_out, r_out, s_out,
                L, num_out, C, src.shape[1], hidden.stride(0), hidden.stride(1), residual.stride(0), residual.stride(1),
                HAS_SIZE=size is not None, BLOCK_C=block_c, num_warps=4 if block_c >= 512 else 2,
            )
        ctx.save_for_backward(size, dest, s_out)
        ctx.dtypes = (hidden.dtype, residual.dtype)
        ctx.mark_non_differentiable(s_out)
        return h_out, r_out, s_out

    @staticmethod
    def backward(ctx, d_h, d_r, _d_s):
        size, dest, s_out = ctx.saved_tensors
        batch, L = dest.shape
        idx = dest[..., None]
        w = s_out.gather(1, idx).reciprocal()  # [batch, L, 1]
        if size is not None:
            w = w * size.float()
        grads = []
        for g, dtype in zip((d_h, d_r), ctx.dtypes):
            if g is None:
                grads.append(None)
                continue
            grads.append((g.float().gather(1, idx.expand(-1, -1, g.shape[-1])) * w).to(dtype))
        return grads[0], grads[1], None, None, None, None


def merge_streams_fused(hidden: Tensor, residual: Tensor, size: Optional[Tensor], plan, ordered: bool):
    """Size-weighted merge of the two streams with one fused kernel -> ((hidden, residual), new_size).
    Same result as ``merge_streams([hidden, residual], size, plan, "sum")`` up to float rounding."""
    L = hidden.shape[1]
    num_out = L - plan.src_idx.shape[1]
    dest = destination_map(plan, L, ordered)
    h, r, s = _FusedMerge.apply(hidden, residual, size, dest, _source_tokens(plan), num_out)
    return (h, r), s

"""Triton kernels of the fused residual add + RMSNorm, forward and backward (:mod:`rmeeto.ops.norm` holds the
contract, the PyTorch reference and the dispatch): one kernel each way, plus one sum for the weight gradient.
"""

from __future__ import annotations

from typing import Optional

import torch

from rmeeto.ops.triton._launch import on_device

Tensor = torch.Tensor

__all__ = ["add_rms_norm_triton", "is_available"]


try:
    import triton
    import triton.language as tl

    @triton.jit
    def _add_norm_fwd(h_ptr, r_ptr, s_ptr, w_ptr, ro_ptr, y_ptr, rstd_ptr, N, C, L, eps,
                      HAS_RES: tl.constexpr, HAS_SCALE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.arange(0, BLOCK_C)
        mr = rows < N
        m = mr[:, None] & (cols[None, :] < C)
        off = rows[:, None].to(tl.int64) * C + cols[None, :]
        h = tl.load(h_ptr + off, mask=m, other=0.0)
        if HAS_SCALE:  # drop path: hidden * (mask / keep) in hidden's dtype, as the reference
            sc = tl.load(s_ptr + rows // L, mask=mr, other=0.0)
            h = (h * sc.to(h.dtype)[:, None]).to(h.dtype)
        if HAS_RES:
            r = tl.load(r_ptr + off, mask=m, other=0.0).to(tl.float32) + h.to(tl.float32)
        else:
            r = h.to(tl.float32)
        rstd = 1.0 / tl.sqrt_rn(tl.sum(r * r, axis=1) / C + eps)
        w = tl.load(w_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)
        tl.store(ro_ptr + off, r, mask=m)
        tl.store(y_ptr + off, (r * rstd[:, None] * w[None, :]).to(y_ptr.dtype.element_ty), mask=m)
        tl.store(rstd_ptr + rows, rstd, mask=mr)

    @triton.jit
    def _add_norm_bwd(dy_ptr, dro_ptr, ro_ptr, rstd_ptr, s_ptr, w_ptr, dh_ptr, dr_ptr, dw_ptr, N, C, L,
                      HAS_DRO: tl.constexpr, HAS_RES: tl.constexpr, HAS_SCALE: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
        """dr = d_residual_out + rstd * (w dy) - r rstd^3 / C * sum(w dy r); d_hidden = dr * scale;
        the weight gradient's partial sum over this program's rows goes to dw[program]."""
        pid = tl.program_id(0)
        rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.arange(0, BLOCK_C)
        mr = rows < N
        mc = cols < C
        m = mr[:, None] & mc[None, :]
        off = rows[:, None].to(tl.int64) * C + cols[None, :]
        r = tl.load(ro_ptr + off, mask=m, other=0.0)
        rstd = tl.load(rstd_ptr + rows, mask=mr, other=0.0)[:, None]
        dy = tl.load(dy_ptr + off, mask=m, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=mc, other=0.0).to(tl.float32)[None, :]
        g = dy * w
        dr = rstd * g - r * (rstd * rstd * rstd) * (tl.sum(g * r, axis=1)[:, None] / C)
        if HAS_DRO:
            dr += tl.load(dro_ptr + off, mask=m, other=0.0)
        tl.store(dw_ptr + pid * C + cols, tl.sum(dy * r * rstd, axis=0), mask=mc)
        if HAS_RES:
            tl.store(dr_ptr + off, dr, mask=m)
        if HAS_SCALE:
            dr = dr * tl.load(s_ptr + rows // L, mask=mr, other=0.0)[:, None]
        tl.store(dh_ptr + off, dr.to(dh_ptr.dtype.element_ty), mask=m)

    _HAS_TRITON = True
except Exception:  # pragma: no cover - depends on the install
    _HAS_TRITON = False


def is_available() -> bool:
    """True when Triton imports (the kernels then run on CUDA tensors, or on CPU under TRITON_INTERPRET=1)."""
    return _HAS_TRITON


def _launch_shape(C: int) -> tuple[int, int, int]:
    block_c = triton.next_power_of_2(C)
    block_n = max(1, min(16, 2048 // block_c))  # <= 16 values per thread: ~110 registers in the backward
    return block_n, block_c, 4 if block_c <= 512 else 8


class _AddRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, residual, weight, scale, eps):
        shape = hidden.shape
        C = shape[-1]
        L = shape[1] if hidden.dim() == 3 else 1
        h = hidden.contiguous().view(-1, C)
        r = residual.contiguous().view(-1, C) if residual is not None else h
        N = h.shape[0]
        ro = torch.empty(N, C, device=h.device, dtype=torch.float32)
        y = torch.empty(N, C, device=h.device, dtype=hidden.dtype)
        rstd = torch.empty(N, device=h.device, dtype=torch.float32)
        block_n, block_c, warps = _launch_shape(C)
        s = scale.float().contiguous() if scale is not None else rstd
        with on_device(h.device):
            _add_norm_fwd[(triton.cdiv(N, block_n),)](
                h, r, s, weight, ro, y, rstd, N, C, L, eps,
                HAS_RES=residual is not None, HAS_SCALE=scale is not None, BLOCK_N=block_n, BLOCK_C=block_c,
                num_warps=warps)
        ctx.save_for_backward(ro, rstd, weight, scale)
        ctx.meta = (shape, L, hidden.dtype, residual is not None)
        return ro.view(shape), y.view(shape)

    @staticmethod
    def backward(ctx, d_ro, d_y):
        ro, rstd, weight, scale = ctx.saved_tensors
        shape, L, h_dtype, has_res = ctx.meta
        N, C = ro.shape
        dy = d_y.contiguous().view(N, C) if d_y is not None else torch.zeros(N, C, device=ro.device, dtype=h_dtype)
        block_n, block_c, warps = _launch_shape(C)
        n_prog = triton.cdiv(N, block_n)
        dh = torch.empty(N, C, device=ro.device, dtype=h_dtype)
        dr = torch.empty(N, C, device=ro.device, dtype=torch.float32) if has_res else dh
        dw = torch.empty(n_prog, C, device=ro.device, dtype=torch.float32)
        dro = d_ro.contiguous().view(N, C) if d_ro is not None else ro
        s = scale.float().contiguous() if scale is not None else rstd
        with on_device(ro.device):
            _add_norm_bwd[(n_prog,)](
                dy, dro, ro, rstd, s, weight, dh, dr, dw, N, C, L,
                HAS_DRO=d_ro is not None, HAS_RES=has_res, HAS_SCALE=scale is not None,
                BLOCK_N=block_n, BLOCK_C=block_c, num_warps=warps)
        return dh.view(shape), (dr.view(shape) if has_res else None), dw.sum(0).to(weight.dtype), None, None


def add_rms_norm_triton(hidden: Tensor, residual: Optional[Tensor], weight: Tensor, eps: float,
                        scale: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """:func:`rmeeto.ops.norm.add_rms_norm` by the kernels (same shapes and results up to rounding)."""
    if residual is not None and residual.dtype != torch.float32:
        residual = residual.float()
    return _AddRMSNorm.apply(hidden, residual, weight, scale, eps)

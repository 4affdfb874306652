"""Triton kernels of the fused residual add + RMSNorm, forward and backward (:mod:`rmeeto.ops.norm` holds the
contract, the PyTorch reference and the dispatch): one kernel each way, plus one sum for the weight gradient.
"""

from __future__ import annotations

from typing import Optional

import torch

from rmeeto.ops.triton._inductor import library_op
from rmeeto.ops.triton._launch import launch, next_pow2, pdl_meta
from rmeeto.ops.triton._pdl import follow_previous

Tensor = torch.Tensor

__all__ = ["add_rms_norm_triton", "is_available"]


try:
    import triton
    import triton.language as tl

    @triton.jit
    def rms_rows(r, w_ptr, cols, C, eps):
        """RMSNorm of float32 rows r [BLOCK_N, BLOCK_C] (masked columns zero) -> (rstd [BLOCK_N], normed rows in
        float32). The one copy of this arithmetic, shared with the fused merge + norm of
        :mod:`rmeeto.ops.triton.merge`, so the two kernels give the same bits."""
        rstd = 1.0 / tl.sqrt_rn(tl.sum(r * r, axis=1) / C + eps)
        w = tl.load(w_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)
        return rstd, r * rstd[:, None] * w[None, :]

    @triton.jit
    def _add_norm_fwd(h_ptr, r_ptr, s_ptr, w_ptr, ro_ptr, y_ptr, rstd_ptr, N, C, L, eps,
                      HAS_RES: tl.constexpr, HAS_SCALE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                      PDL: tl.constexpr = False):
        follow_previous(PDL)  # under PDL: wait for the previous kernel, then release the next
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
        rstd, y = rms_rows(r, w_ptr, cols, C, eps)
        tl.store(ro_ptr + off, r, mask=m)
        tl.store(y_ptr + off, y.to(y_ptr.dtype.element_ty), mask=m)
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


def launch_shape(C: int) -> tuple[int, int, int]:
    """(rows per program, channel block, warps) of the norm kernels for C channels; the fused merge + norm of
    :mod:`rmeeto.ops.triton.merge` takes the same channel block, and the same rows and warps unless another
    tile was measured to give the same row sums faster (its ``_MERGE_NORM_TILES``)."""
    block_c = next_pow2(C)
    block_n = max(1, min(16, 2048 // block_c))  # <= 16 values per thread: ~110 registers in the backward
    return block_n, block_c, 4 if block_c <= 512 else 8


def _flat(t: Tensor, C: int) -> Tensor:
    """[..., C] -> [N, C] rows, without a copy when already contiguous."""
    return (t if t.is_contiguous() else t.contiguous()).view(-1, C)


def _norm_fwd(hidden: Tensor, residual: Optional[Tensor], weight: Tensor, scale: Optional[Tensor],
              eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Forward launcher: (residual_out float32, normed in hidden's dtype, both hidden's shape; rstd [N] float32,
    N = all tokens) for hidden, residual [batch, tokens, C] (or [..., C]), residual float32 or None."""
    shape = hidden.shape
    C = shape[-1]
    L = shape[1] if hidden.dim() == 3 else 1
    h = _flat(hidden, C)
    r = _flat(residual, C) if residual is not None else h
    N = h.shape[0]
    ro = torch.empty(shape, device=h.device, dtype=torch.float32)
    y = torch.empty(shape, device=h.device, dtype=hidden.dtype)
    rstd = torch.empty(N, device=h.device, dtype=torch.float32)
    s = _scale(scale) if scale is not None else rstd
    grid, tail, meta = fwd_spec(N, C, L, eps, residual is not None, scale is not None)
    launch(_add_norm_fwd, grid, h.device, h, r, s, weight, ro, y, rstd, *tail, **meta)
    return ro, y, rstd


def fwd_spec(N: int, C: int, L: int, eps: float, has_res: bool, has_scale: bool = False) -> tuple[tuple, tuple, dict]:
    """(grid, scalar arguments, constexprs and launch options) of the forward kernel over N rows of C channels
    (L tokens per batch element). Its tensors come first: hidden and residual ([N, C] contiguous; hidden again
    without a residual), the per-row scale (rstd without one), weight, residual_out, normed, rstd."""
    block_n, block_c, warps = launch_shape(C)
    meta = dict(HAS_RES=has_res, HAS_SCALE=has_scale, BLOCK_N=block_n, BLOCK_C=block_c, num_warps=warps,
                **pdl_meta())
    return ((N + block_n - 1) // block_n,), (N, C, L, eps), meta


def _scale(scale: Tensor) -> Tensor:
    return scale if scale.dtype == torch.float32 and scale.is_contiguous() else scale.float().contiguous()


def _norm_bwd(d_ro: Optional[Tensor], d_y: Optional[Tensor], ro: Tensor, rstd: Tensor, weight: Tensor,
              scale: Optional[Tensor], has_res: bool, hidden_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Backward launcher: (d_hidden in ``hidden_dtype``, d_residual float32 (an empty tensor without a
    residual), d_weight like weight); shapes as ro's."""
    shape = ro.shape
    C = shape[-1]
    L = shape[1] if ro.dim() == 3 else 1
    ro2 = ro.view(-1, C)
    N = ro2.shape[0]
    dev = ro.device
    dy = _flat(d_y, C) if d_y is not None else torch.zeros(N, C, device=dev, dtype=hidden_dtype)
    block_n, block_c, warps = launch_shape(C)
    n_prog = (N + block_n - 1) // block_n
    dh = torch.empty(shape, device=dev, dtype=hidden_dtype)
    dr = torch.empty(shape, device=dev, dtype=torch.float32) if has_res else torch.empty(0, device=dev)
    dw = torch.empty(n_prog, C, device=dev, dtype=torch.float32)
    dro = _flat(d_ro, C) if d_ro is not None else ro2
    s = _scale(scale) if scale is not None else rstd
    launch(_add_norm_bwd, (n_prog,), dev,
           dy, dro, ro2, rstd, s, weight, dh, dr if has_res else dh, dw, N, C, L,
           HAS_DRO=d_ro is not None, HAS_RES=has_res, HAS_SCALE=scale is not None,
           BLOCK_N=block_n, BLOCK_C=block_c, num_warps=warps)
    return dh, dr, dw.sum(0).to(weight.dtype)


# --------------------------------------------------------------------------------------- custom ops
@library_op("add_rms_norm")
def _add_rms_norm_op(hidden: Tensor, residual: Optional[Tensor], weight: Tensor, scale: Optional[Tensor],
                     eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(residual_out, normed, rstd): rstd is returned only so the backward can save it."""
    return _norm_fwd(hidden, residual, weight, scale, eps)


@torch.library.register_fake(_add_rms_norm_op)
def _(hidden, residual, weight, scale, eps):
    n = hidden.numel() // hidden.shape[-1] if hidden.shape[-1] else 0
    return (torch.empty(hidden.shape, device=hidden.device, dtype=torch.float32),
            torch.empty(hidden.shape, device=hidden.device, dtype=hidden.dtype),
            hidden.new_empty(n, dtype=torch.float32))


@library_op("add_rms_norm_bwd")
def _add_rms_norm_bwd_op(d_ro: Optional[Tensor], d_y: Optional[Tensor], ro: Tensor, rstd: Tensor, weight: Tensor,
                         scale: Optional[Tensor], has_res: bool,
                         hidden_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    return _norm_bwd(d_ro, d_y, ro, rstd, weight, scale, has_res, hidden_dtype)


@torch.library.register_fake(_add_rms_norm_bwd_op)
def _(d_ro, d_y, ro, rstd, weight, scale, has_res, hidden_dtype):
    return (torch.empty(ro.shape, device=ro.device, dtype=hidden_dtype),
            torch.empty(ro.shape if has_res else (0,), device=ro.device, dtype=torch.float32),
            torch.empty_like(weight))


def _save(ctx, ro, rstd, weight, scale, has_res, hidden_dtype):
    ctx.save_for_backward(ro, rstd, weight, scale)
    ctx.meta = (has_res, hidden_dtype)


def _input_grads(ctx, grads):
    """(d_hidden, d_residual, d_weight) as gradients of (hidden, residual, weight, scale, eps)."""
    dh, dr, dw = grads
    return dh, (dr if ctx.meta[0] else None), dw, None, None


def _setup_context(ctx, inputs, output):
    hidden, residual, weight, scale, eps = inputs
    ro, _, rstd = output
    _save(ctx, ro, rstd, weight, scale, residual is not None, hidden.dtype)
    ctx.mark_non_differentiable(rstd)


def _backward(ctx, d_ro, d_y, _d_rstd):
    return _input_grads(ctx, _add_rms_norm_bwd_op(d_ro, d_y, *ctx.saved_tensors, *ctx.meta))


torch.library.register_autograd(_add_rms_norm_op, _backward, setup_context=_setup_context)


class _AddRMSNorm(torch.autograd.Function):
    """Eager twin of the custom op: the same launchers, without torch.library's dispatch."""

    @staticmethod
    def forward(ctx, hidden, residual, weight, scale, eps):
        ro, y, rstd = _norm_fwd(hidden, residual, weight, scale, eps)
        _save(ctx, ro, rstd, weight, scale, residual is not None, hidden.dtype)
        return ro, y

    @staticmethod
    def backward(ctx, d_ro, d_y):
        return _input_grads(ctx, _norm_bwd(d_ro, d_y, *ctx.saved_tensors, *ctx.meta))


def add_rms_norm_triton(hidden: Tensor, residual: Optional[Tensor], weight: Tensor, eps: float,
                        scale: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """:func:`rmeeto.ops.norm.add_rms_norm` by the kernels (same shapes and results up to rounding). The custom
    op while torch.compile traces, else the autograd function, else (no gradient needed) the launcher."""
    if residual is not None and residual.dtype != torch.float32:
        residual = residual.float()
    eps = float(eps)
    if torch.compiler.is_compiling():
        ro, y, _ = _add_rms_norm_op(hidden, residual, weight, scale, eps)
        return ro, y
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad
                                    or (residual is not None and residual.requires_grad)):
        return _AddRMSNorm.apply(hidden, residual, weight, scale, eps)
    ro, y, _ = _norm_fwd(hidden, residual, weight, scale, eps)
    return ro, y

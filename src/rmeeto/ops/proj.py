"""The bidirectional mixer's projections around its scan: x_proj then dt_proj for both directions, and the
two directions' sum then out_proj.

    x_dbl_d = u_d @ wx_d.T                           # [batch, length, R + 2N]
    dt_d, B_d, C_d = x_dbl_d.split([R, N, N], -1)
    delta_d = dt_d @ wdt_d.T                         # [batch, length, D] (dt_proj's bias goes to the scan)

for d = forward (``_f``) and backward (``_b``). :func:`bidir_scan_inputs_torch` is the reference (four GEMMs);
:func:`bidir_scan_inputs` runs the fused kernel of :mod:`rmeeto.ops.triton.proj` (one launch for all four) for
16-bit CUDA tensors when no gradient has to flow (inference, a frozen teacher), its switch
(``RMEETO_FUSED_PROJ``) on and ``torch.compile`` not tracing (Inductor then sees the GEMMs), and the reference
otherwise. The two paths round the same values once each but sum in different orders: equal to rounding.

    y = y2[0] + y2[1]                                # the scan's two directions, rounded once
    out = y @ w_out.T                                # [batch, length, d_model]

:func:`sum_out_proj_torch` is its reference (:func:`rmeeto.ops.selective_scan.sum_directions`, then a cuBLAS
GEMM); :func:`sum_out_proj` runs :func:`rmeeto.ops.triton.proj.sum_out_proj` (the add in the GEMM's operand
load: y is never written) under the same conditions, switch ``RMEETO_FUSED_OUT_PROJ``. The sum's bits are the
add's; the product is equal to rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rmeeto.ops import policy

try:  # optional: the fused kernel needs Triton
    from rmeeto.ops.triton import proj as _triton_proj
except Exception:  # pragma: no cover - depends on the install
    _triton_proj = None

Tensor = torch.Tensor

__all__ = ["bidir_scan_inputs", "bidir_scan_inputs_torch", "fused_applies", "sum_out_proj", "sum_out_proj_torch"]

ScanInputs = tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor], tuple[Tensor, Tensor]]


def _split(x_dbl: Tensor, dt_rank: int, d_state: int) -> tuple[Tensor, Tensor, Tensor]:
    # split_with_sizes: what Tensor.split calls for a list, without its Python wrapper (~3-5 us per call)
    return x_dbl.split_with_sizes([dt_rank, d_state, d_state], -1)


def bidir_scan_inputs_torch(u_f: Tensor, u_b: Tensor, wx_f: Tensor, wx_b: Tensor, wdt_f: Tensor, wdt_b: Tensor,
                            d_state: int) -> ScanInputs:
    """Reference of :func:`bidir_scan_inputs`: two GEMMs per direction."""
    dt_rank = wdt_f.shape[1]
    dt_f, B_f, C_f = _split(F.linear(u_f, wx_f), dt_rank, d_state)
    dt_b, B_b, C_b = _split(F.linear(u_b, wx_b), dt_rank, d_state)
    return (F.linear(dt_f, wdt_f), F.linear(dt_b, wdt_b)), (B_f, B_b), (C_f, C_b)


def fused_applies(u: Tensor, backend: str, *tensors: Tensor, op: str = "proj") -> bool:
    """Would :func:`bidir_scan_inputs` (``op`` "proj") or :func:`sum_out_proj` ("out_proj") run its fused
    kernel for input ``u`` (and these weights) here?"""
    if (_triton_proj is None or u.dtype not in (torch.float16, torch.bfloat16)
            or not policy.use_fused(op, u, backend) or torch.compiler.is_compiling()):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def bidir_scan_inputs(u_f: Tensor, u_b: Tensor, wx_f: Tensor, wx_b: Tensor, wdt_f: Tensor, wdt_b: Tensor,
                      d_state: int, backend: str = "auto") -> ScanInputs:
    """u_f, u_b [batch, length, D] (the two directions' conv outputs); wx_f, wx_b [R + 2 * d_state, D] (x_proj
    weights); wdt_f, wdt_b [D, R] (dt_proj weights, without bias) -> ((delta_f, delta_b), (B_f, B_b),
    (C_f, C_b)): delta [batch, length, D], B and C [batch, length, d_state], in u's dtype (weights of another
    dtype rounded to it, as under autocast). ``backend``: "auto", "torch" or "triton", as
    :func:`rmeeto.ops.policy.use_fused`. On the fused path the six are views of two buffers
    ([2, batch, length, R + 2 * d_state] and [2, batch, length, D])."""
    dt_rank = wdt_f.shape[1]
    D = u_f.shape[-1]
    if (u_b.shape != u_f.shape or u_f.dim() != 3 or wx_f.shape != (dt_rank + 2 * d_state, D)
            or wx_b.shape != wx_f.shape or wdt_f.shape != (D, dt_rank) or wdt_b.shape != wdt_f.shape):
        raise ValueError(
            f"bidir_scan_inputs: u {tuple(u_f.shape)}/{tuple(u_b.shape)}, x_proj {tuple(wx_f.shape)}/"
            f"{tuple(wx_b.shape)}, dt_proj {tuple(wdt_f.shape)}/{tuple(wdt_b.shape)} and d_state {d_state} do "
            "not fit")
    n2 = 2 * d_state
    if not (fused_applies(u_f, backend, u_f, u_b, wx_f, wx_b, wdt_f, wdt_b) and n2 >= 16 and n2 & (n2 - 1) == 0):
        if u_f.dtype != wx_f.dtype:  # the fused kernel's rounding of the weights, on this path too
            wx_f, wx_b, wdt_f, wdt_b = (w.to(u_f.dtype) for w in (wx_f, wx_b, wdt_f, wdt_b))
        return bidir_scan_inputs_torch(u_f, u_b, wx_f, wx_b, wdt_f, wdt_b, d_state)
    if not (u_f.is_contiguous() and u_b.is_contiguous()):
        u_f, u_b = u_f.contiguous(), u_b.contiguous()
    if wx_f.stride(1) != 1 or wx_b.stride() != wx_f.stride():
        wx_f, wx_b = wx_f.contiguous(), wx_b.contiguous()
    if wdt_f.stride(1) != 1 or wdt_b.stride() != wdt_f.stride():
        wdt_f, wdt_b = wdt_f.contiguous(), wdt_b.contiguous()
    x_dbl, delta = _triton_proj.bidir_scan_inputs(u_f, u_b, wx_f, wx_b, wdt_f, wdt_b, d_state)
    _, B, C = _split(x_dbl, dt_rank, d_state)
    return (delta[0], delta[1]), (B[0], B[1]), (C[0], C[1])


def sum_out_proj_torch(y2: Tensor, w: Tensor) -> Tensor:
    """Reference of :func:`sum_out_proj`."""
    from rmeeto.ops.selective_scan import sum_directions

    return F.linear(sum_directions(y2), w)


def sum_out_proj(y2: Tensor, w: Tensor, backend: str = "auto") -> Tensor:
    """y2 [2, batch, K, length] (the two directions of :func:`rmeeto.ops.selective_scan.selective_scan_bidir`),
    w [N, K] (out_proj's weight, no bias) -> [batch, length, N] in y2's dtype: ``(y2[0] + y2[1])`` (transposed to
    [batch, length, K], rounded once) ``@ w.T``, w rounded to y2's dtype. The fused kernel needs y2 stored
    channels-last (as the Triton scan returns it); other layouts take the reference."""
    if y2.dim() != 4 or y2.shape[0] != 2 or w.dim() != 2 or w.shape[1] != y2.shape[2]:
        raise ValueError(f"sum_out_proj: y2 {tuple(y2.shape)} and w {tuple(w.shape)} do not fit")
    planes = y2.transpose(2, 3)  # [2, batch, length, K]
    if (not fused_applies(y2, backend, y2, w, op="out_proj") or planes[0].stride() != planes[1].stride()
            or not planes[0].is_contiguous()):
        return sum_out_proj_torch(y2, w if w.dtype == y2.dtype else w.to(y2.dtype))
    if w.stride(1) != 1:
        w = w.contiguous()
    return _triton_proj.sum_out_proj(planes, w)

"""The bidirectional mixer's input-dependent scan parameters: x_proj then dt_proj, for both directions.

    x_dbl_d = u_d @ wx_d.T                           # [batch, length, R + 2N]
    dt_d, B_d, C_d = x_dbl_d.split([R, N, N], -1)
    delta_d = dt_d @ wdt_d.T                         # [batch, length, D] (dt_proj's bias goes to the scan)

for d = forward (``_f``) and backward (``_b``). :func:`bidir_scan_inputs_torch` is the reference (four GEMMs);
:func:`bidir_scan_inputs` runs the fused kernel of :mod:`rmeeto.ops.triton.proj` (one launch for all four) for
16-bit CUDA tensors when no gradient has to flow (inference, a frozen teacher), its switch
(``RMEETO_FUSED_PROJ``) on and ``torch.compile`` not tracing (Inductor then sees the GEMMs), and the reference
otherwise. The two paths round the same values once each but sum in different orders: equal to rounding.
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

__all__ = ["bidir_scan_inputs", "bidir_scan_inputs_torch", "fused_applies", "fused_scan_inputs", "kernel_fits",
           "split_x_dbl", "ALIGN_BC_TRAIN"]

ScanInputs = tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor], tuple[Tensor, Tensor]]


def _split(x_dbl: Tensor, dt_rank: int, d_state: int) -> tuple[Tensor, Tensor, Tensor]:
    # split_with_sizes: what Tensor.split calls for a list, without its Python wrapper (~3-5 us per call)
    return x_dbl.split_with_sizes([dt_rank, d_state, d_state], -1)


# The differentiable path's B / C rows for the Triton scan (:func:`split_x_dbl`'s ``align``): copied out of x_proj's
# output into rows of their own where that output leaves them unaligned (Vim-Ti's dt_rank of 12 in 16 bits).
# Forty-first session (H200, benchmarks/sessions/s41_gpu3.sh, alternating processes): Vim-Ti's graphed re-training
# step 2,227.5 / 2,496.4 -> 2,369.7 / 2,641.8 img/s with an unmerged / merged student (+6.4% / +5.8%), 48 launches
# more per step. Off: the views of x_proj's output, as before.
ALIGN_BC_TRAIN = True


def split_x_dbl(x_dbl: Tensor, dt_rank: int, d_state: int, align: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """x_dbl [..., dt_rank + 2 * d_state] (x_proj's output) -> its (dt, B, C) columns, as views.

    ``align`` (the Triton scan will read B and C; switch ``ALIGN_BC_TRAIN``): where x_dbl's rows leave B and C
    less than 16-byte aligned (16-bit rows at Vim-Ti's dt_rank of 12), B and C are views of one contiguous copy
    of their columns instead ([..., 2 * d_state]), so the scan reads each row as a vector rather than as 32-bit
    pairs (:func:`rmeeto.ops.triton.scan._bc_mode`). The same values; the copy is one small kernel (a Vim-Ti
    training step launched 48 more kernels in all). For the differentiable path (training): the fused kernel
    of inference writes such rows itself (:func:`rmeeto.ops.triton.proj.xdbl_row`)."""
    size = x_dbl.element_size()
    # B's column and the row stride (not the address: torch.compile traces strides, not storage offsets)
    if align and ALIGN_BC_TRAIN and ((dt_rank * size) % 16 or (x_dbl.stride(-2) * size) % 16):
        dt, bc = x_dbl.split_with_sizes([dt_rank, 2 * d_state], -1)
        B, C = bc.contiguous().split_with_sizes([d_state, d_state], -1)
        return dt, B, C
    return _split(x_dbl, dt_rank, d_state)


def bidir_scan_inputs_torch(u_f: Tensor, u_b: Tensor, wx_f: Tensor, wx_b: Tensor, wdt_f: Tensor, wdt_b: Tensor,
                            d_state: int) -> ScanInputs:
    """Reference of :func:`bidir_scan_inputs`: two GEMMs per direction."""
    dt_rank = wdt_f.shape[1]
    dt_f, B_f, C_f = _split(F.linear(u_f, wx_f), dt_rank, d_state)
    dt_b, B_b, C_b = _split(F.linear(u_b, wx_b), dt_rank, d_state)
    return (F.linear(dt_f, wdt_f), F.linear(dt_b, wdt_b)), (B_f, B_b), (C_f, C_b)


def fused_applies(u_f: Tensor, u_b: Tensor, wx_f: Tensor, wx_b: Tensor, wdt_f: Tensor, wdt_b: Tensor,
                  backend: str = "auto") -> bool:
    """Would :func:`bidir_scan_inputs` run the fused kernel on these inputs here? 16-bit activations, the
    switch on for ``backend`` (:func:`rmeeto.ops.policy.use_fused`), ``torch.compile`` not tracing, B and C
    together a power-of-two width of at least 16 columns (x_proj's rows minus dt_proj's rank), and no gradient
    to flow to any of them."""
    if torch.compiler.is_compiling() or not kernel_fits(u_f, wx_f, wdt_f, backend):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in (u_f, u_b, wx_f, wx_b, wdt_f, wdt_b)))


def kernel_fits(u: Tensor, wx: Tensor, wdt: Tensor, backend: str = "auto") -> bool:
    """The part of :func:`fused_applies` that the inputs' dtypes and shapes decide (16-bit activations, the
    switch on, B and C together a power-of-two width of at least 16), for a caller that rules out gradients
    itself: the mixer tracing its inference op under torch.compile."""
    if (_triton_proj is None or u.dtype not in (torch.float16, torch.bfloat16)
            or not policy.use_fused("proj", u, backend)):
        return False
    n2 = wx.shape[0] - wdt.shape[1]
    return n2 >= 16 and not n2 & (n2 - 1)


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
    if not fused_applies(u_f, u_b, wx_f, wx_b, wdt_f, wdt_b, backend):
        if u_f.dtype != wx_f.dtype:  # the fused kernel's rounding of the weights, on this path too
            wx_f, wx_b, wdt_f, wdt_b = (w.to(u_f.dtype) for w in (wx_f, wx_b, wdt_f, wdt_b))
        return bidir_scan_inputs_torch(u_f, u_b, wx_f, wx_b, wdt_f, wdt_b, d_state)
    return fused_scan_inputs(u_f, u_b, wx_f, wx_b, wdt_f, wdt_b, d_state)


def fused_scan_inputs(u_f: Tensor, u_b: Tensor, wx_f: Tensor, wx_b: Tensor, wdt_f: Tensor, wdt_b: Tensor,
                      d_state: int) -> ScanInputs:
    """The fused path of :func:`bidir_scan_inputs`, for a caller that has checked the shapes and
    :func:`fused_applies` itself (the mixer, once per forward)."""
    if not (u_f.is_contiguous() and u_b.is_contiguous()):
        u_f, u_b = u_f.contiguous(), u_b.contiguous()
    if wx_f.stride(1) != 1 or wx_b.stride() != wx_f.stride():
        wx_f, wx_b = wx_f.contiguous(), wx_b.contiguous()
    if wdt_f.stride(1) != 1 or wdt_b.stride() != wdt_f.stride():
        wdt_f, wdt_b = wdt_f.contiguous(), wdt_b.contiguous()
    x_dbl, delta = _triton_proj.bidir_scan_inputs(u_f, u_b, wx_f, wx_b, wdt_f, wdt_b, d_state)
    _, B, C = _triton_proj.xdbl_parts(x_dbl, wdt_f.shape[1], d_state)
    return (delta[0], delta[1]), (B[0], B[1]), (C[0], C[1])

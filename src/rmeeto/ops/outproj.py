"""The bidirectional mixer's last step: both scan directions' outputs added, then out_proj.

    y = y_f + y_b                    # rounded to the activations' dtype (sum_directions)
    out = y @ W_out.T (+ bias)

:func:`sum_out_proj_torch` is the reference (the elementwise add, then ``F.linear``); :func:`sum_out_proj` runs
the kernel of :mod:`rmeeto.ops.triton.outproj` (one launch, y never written) where :func:`fused_applies` says so:
16-bit CUDA activations with weights of their dtype and no bias, a width the kernel was measured ahead at
(:func:`rmeeto.ops.triton.outproj.fits`; wider ones on Hopper over few enough rows: its TMA tiles,
:func:`rmeeto.ops.triton.outproj.tma_fits`), the directions' planes each contiguous, the switch ``outproj`` on
(``RMEETO_FUSED_OUTPROJ``), no gradient to flow and ``torch.compile`` not tracing (Inductor then sees the add and
the GEMM). The two paths round the same values once each but sum the GEMM in different orders: equal to rounding.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from rmeeto.ops import policy
from rmeeto.ops.selective_scan import sum_directions

try:  # optional: the fused kernel needs Triton
    from rmeeto.ops.triton import outproj as _triton_outproj
    from rmeeto.ops.triton import tma_gemm as _tma_gemm
except Exception:  # pragma: no cover - depends on the install
    _triton_outproj = None

Tensor = torch.Tensor

__all__ = ["sum_out_proj", "sum_out_proj_torch", "fused_applies", "kernel_fits", "planes"]


def sum_out_proj_torch(y2: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """Reference of :func:`sum_out_proj`: :func:`rmeeto.ops.selective_scan.sum_directions`, then ``F.linear``."""
    return F.linear(sum_directions(y2), weight, bias)


def planes(y2: Tensor) -> Optional[Tensor]:
    """y2 [2, batch, dim, L] as the kernel's [2, batch, L, dim] (each plane contiguous), or None where it is
    not laid out so (the scan's channels-last output is)."""
    y = y2.transpose(2, 3)
    _, batch, L, D = y.shape
    return y if y.stride()[1:] == (L * D, D, 1) else None


def kernel_fits(y: Tensor, weight: Tensor, bias: Optional[Tensor], backend: str = "auto") -> bool:
    """What the dtypes, shapes and switches decide of :func:`fused_applies` (``y`` the activations [2, batch, dim,
    L], any layout): the weight on their device and one :func:`rmeeto.ops.triton.outproj.weights_fit` takes for
    their rows (16-bit, of their dtype, a width and row count a kernel was measured ahead at, no bias), the
    switch on for ``backend``. For a caller that rules out gradients, autocast and compiling itself."""
    rows = y.shape[1] * y.shape[3] if y.dim() == 4 else 0
    return (_triton_outproj is not None and weight.device == y.device
            and _triton_outproj.weights_fit(y.dtype, weight, bias, rows, y.device)
            and policy.use_fused("outproj", y, backend))


def fused_applies(y2: Tensor, weight: Tensor, bias: Optional[Tensor] = None, backend: str = "auto") -> bool:
    """Would :func:`sum_out_proj` run the kernel on these inputs here? :func:`kernel_fits`, each direction's plane
    contiguous (:func:`planes`), and no gradient, autocast or torch.compile tracing."""
    return _fused_planes(y2, weight, bias, backend) is not None


def _fused_planes(y2: Tensor, weight: Tensor, bias: Optional[Tensor], backend: str) -> Optional[Tensor]:
    """The kernel's view of ``y2`` (:func:`planes`) where :func:`fused_applies`, else None."""
    if torch.compiler.is_compiling() or not kernel_fits(y2, weight, bias, backend):
        return None
    if torch.is_autocast_enabled(y2.device.type) or (
            torch.is_grad_enabled() and (y2.requires_grad or weight.requires_grad)):
        return None
    y = planes(y2)
    if y is not None and not _triton_outproj.fits(y.shape[-1], weight.shape[0]) and not _tma_gemm.aligned(y[0], y[1]):
        return None  # the TMA tiles' descriptors need both planes 16-byte aligned
    return y


def sum_out_proj(y2: Tensor, weight: Tensor, bias: Optional[Tensor] = None, backend: str = "auto") -> Tensor:
    """y2 [2, batch, dim, L] (the bidirectional scan's output), weight [C, dim] -> out [batch, L, C]:
    ``F.linear(y2[0] + y2[1] (token-major), weight, bias)``. ``backend``: "auto", "torch" or "triton", as
    :func:`rmeeto.ops.policy.use_fused`."""
    if y2.dim() != 4 or y2.shape[0] != 2 or weight.dim() != 2 or weight.shape[1] != y2.shape[2]:
        raise ValueError(f"sum_out_proj: y2 {tuple(y2.shape)} and weight {tuple(weight.shape)} do not fit "
                         "([2, batch, dim, L] and [C, dim])")
    y = _fused_planes(y2, weight, bias, backend)
    if y is None:
        return sum_out_proj_torch(y2, weight, bias)
    return _triton_outproj.sum_out_proj(y, weight)

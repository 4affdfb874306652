"""The bidirectional mixer's first step: in_proj, ``xz = hidden @ W_in.T (+ bias)``.

:func:`in_proj_torch` is the reference (``F.linear``: cuBLAS on CUDA); :func:`in_proj` runs the kernel of
:mod:`rmeeto.ops.triton.inproj` (persistent tiles over TMA descriptors) where :func:`fused_applies` says so: a CUDA
device with TMA (compute capability 9.0 or more), 16-bit contiguous activations, 16-byte aligned, with a weight of
their dtype, contiguous and aligned, no bias, a width the kernel was measured ahead at
(:func:`rmeeto.ops.triton.inproj.fits`: Vim-Ti's, and Vim-S's up to 186 tokens at batch 128), the switch
``inproj`` on (``RMEETO_FUSED_INPROJ``), no gradient to flow, no autocast, and ``torch.compile`` not tracing
(Inductor then sees the GEMM). The two paths sum in different orders and round once: equal to rounding.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from rmeeto.ops import policy

try:  # optional: the kernel needs Triton (with host-side TMA descriptors)
    from rmeeto.ops.triton import inproj as _triton_inproj
    from rmeeto.ops.triton import tma_gemm as _tma_gemm
    if not _triton_inproj.is_available():
        _triton_inproj = None
except Exception:  # pragma: no cover - depends on the install
    _triton_inproj = None

Tensor = torch.Tensor

__all__ = ["in_proj", "in_proj_torch", "fused_applies", "kernel_fits"]


def in_proj_torch(hidden: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """Reference of :func:`in_proj`: ``F.linear``."""
    return F.linear(hidden, weight, bias)


def kernel_fits(hidden: Tensor, weight: Tensor, bias: Optional[Tensor], backend: str = "auto") -> bool:
    """What the device, dtypes, shapes and switches decide of :func:`fused_applies` (not the activations' layout
    or address): the weight on their device and one :func:`rmeeto.ops.triton.inproj.weights_fit` takes for their
    rows, a device with TMA, the switch on for ``backend``. For a caller that rules out gradients, autocast and
    compiling itself, and checks the activations' layout and alignment per call."""
    rows = hidden.numel() // max(1, hidden.shape[-1]) if hidden.dim() else 0
    return (_triton_inproj is not None and weight.device == hidden.device
            and _triton_inproj.weights_fit(hidden.dtype, weight, bias, rows)
            and _tma_gemm.device_fits(hidden.device) and policy.use_fused("inproj", hidden, backend))


def fused_applies(hidden: Tensor, weight: Tensor, bias: Optional[Tensor] = None, backend: str = "auto") -> bool:
    """Would :func:`in_proj` run the kernel on these inputs here? :func:`kernel_fits`, the activations contiguous
    and 16-byte aligned, and no gradient, autocast or torch.compile tracing."""
    if torch.compiler.is_compiling() or not kernel_fits(hidden, weight, bias, backend):
        return False
    if torch.is_autocast_enabled(hidden.device.type) or (
            torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)):
        return False
    return hidden.is_contiguous() and _tma_gemm.aligned(hidden)


def in_proj(hidden: Tensor, weight: Tensor, bias: Optional[Tensor] = None, backend: str = "auto") -> Tensor:
    """hidden [..., C], weight [2 * D, C] -> xz [..., 2 * D]: ``F.linear(hidden, weight, bias)``. ``backend``:
    "auto", "torch" or "triton", as :func:`rmeeto.ops.policy.use_fused`."""
    if weight.dim() != 2 or hidden.dim() < 1 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"in_proj: hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)} do not fit "
                         "([..., C] and [N, C])")
    if not fused_applies(hidden, weight, bias, backend):
        return in_proj_torch(hidden, weight, bias)
    return _triton_inproj.in_proj(hidden, weight)

"""Residual add (+ drop path) + RMSNorm: the step between Vim's blocks, with its PyTorch reference and dispatch.

    residual_out, normed = add_rms_norm(hidden, residual, weight, eps, scale=None, backend="auto")

    residual_out = residual + hidden * scale[sample]      (float32; ``residual=None``: hidden alone)
    normed       = residual_out * rsqrt(mean(residual_out^2) + eps) * weight     (in hidden's dtype)

    hidden, residual: [batch, tokens, channels]; weight: [channels]; scale: [batch] float32 or None (1).

``scale`` is drop path's per-sample keep/scale factor. In PyTorch this is ~8 kernels forward and ~12 backward
over float32 [tokens, channels] tensors per block; the Triton path (:mod:`rmeeto.ops.triton.norm`) is one kernel
each way (plus one sum for the weight gradient). ``add_rms_norm_torch`` is the reference and the CPU path.

The model calls :func:`drop_add_rms_norm`, which also draws drop path: it is one call whichever path runs, and
the PyTorch path is exactly the unfused modules' arithmetic (:func:`drop_path` then :func:`rms_norm`), so CPU
results are bit-identical to them. The fused path draws the per-sample factor as float32 [batch] and multiplies
once (x * (mask / keep)), where the unfused path computes x * mask / keep in x's dtype; the two round
differently, which is why they stay two paths instead of one.
"""

from __future__ import annotations

from typing import Optional

import torch

from rmeeto.ops import policy

try:  # optional: the fused kernels need Triton
    from rmeeto.ops.triton import norm as _triton_norm
except Exception:  # pragma: no cover - depends on the install
    _triton_norm = None

Tensor = torch.Tensor

__all__ = ["rms_norm", "drop_path", "add_rms_norm", "add_rms_norm_torch", "drop_add_rms_norm"]


def rms_norm(x: Tensor, weight: Tensor, eps: float, out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """x / sqrt(mean(x^2) + eps) * weight over the last dim, in float32, returned in ``out_dtype`` (default x's).
    x: [..., channels]; weight: [channels]."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    return y.to(out_dtype or x.dtype)


def drop_path(x: Tensor, p: float) -> Tensor:
    """Stochastic depth: each sample of x [batch, ...] is zeroed with probability ``p``, the rest scaled by
    1 / (1 - p); ``p == 0``: x itself. The mask is drawn in x's dtype on x's device."""
    if p == 0.0:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


def _drop_path_scale(x: Tensor, p: float) -> Optional[Tensor]:
    """The fused kernel's form of :func:`drop_path`: the per-sample factor mask / keep, float32 [batch]."""
    if p == 0.0:
        return None
    keep = 1.0 - p
    return torch.empty(x.shape[0], device=x.device, dtype=torch.float32).bernoulli_(keep).div_(keep)


def add_rms_norm_torch(hidden: Tensor, residual: Optional[Tensor], weight: Tensor, eps: float,
                       scale: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Reference of :func:`add_rms_norm` (see the module docstring)."""
    h = hidden if scale is None else hidden * scale.view(-1, *([1] * (hidden.dim() - 1))).to(hidden.dtype)
    r = h.float() if residual is None else (residual + h).float()
    return r, rms_norm(r, weight, eps, hidden.dtype)


def add_rms_norm(hidden: Tensor, residual: Optional[Tensor], weight: Tensor, eps: float,
                 scale: Optional[Tensor] = None, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """See the module docstring. ``backend``: "auto" (the kernel policy decides: Triton for CUDA tensors),
    "torch" or "triton" (also CPU tensors, under TRITON_INTERPRET=1)."""
    if not policy.use_fused("norm", hidden, backend):
        return add_rms_norm_torch(hidden, residual, weight, eps, scale)
    if _triton_norm is None or not _triton_norm.is_available():
        raise RuntimeError("the triton norm backend needs triton")
    return _triton_norm.add_rms_norm_triton(hidden, residual, weight, eps, scale)


def drop_add_rms_norm(hidden: Tensor, residual: Optional[Tensor], weight: Tensor, eps: float,
                      drop_prob: float = 0.0, residual_in_fp32: bool = True,
                      backend: str = "auto") -> tuple[Tensor, Tensor]:
    """One block step: residual_out = residual + drop_path(hidden, drop_prob) (hidden alone when ``residual`` is
    None, no drop path then), cast to float32 if ``residual_in_fp32``; normed = rms_norm(residual_out) in
    hidden's dtype. hidden, residual: [batch, tokens, channels] -> (residual_out, normed), same shapes.

    ``drop_prob``: drop path's probability in effect (0 in eval mode). The fused kernel serves it when the
    policy allows (``backend`` as :func:`add_rms_norm`) and the residual is float32; otherwise the PyTorch
    path, bit-identical to residual + DropPath(hidden) followed by RMSNorm."""
    if residual_in_fp32 and policy.use_fused("norm", hidden, backend):
        scale = _drop_path_scale(hidden, drop_prob) if residual is not None else None
        if _triton_norm is None or not _triton_norm.is_available():
            raise RuntimeError("the triton norm backend needs triton")
        return _triton_norm.add_rms_norm_triton(hidden, residual, weight, eps, scale)
    residual = hidden if residual is None else residual + drop_path(hidden, drop_prob)
    if residual_in_fp32:
        residual = residual.float()
    return residual, rms_norm(residual, weight, eps, hidden.dtype)

"""Depthwise causal (or anti-causal) conv1d fused with SiLU, on channels-last activations.

    u = conv_silu(x, weight, bias, reverse=False, backend="auto")

    x: [batch, length, dim] (any strides with unit channel stride, e.g. a slice of in_proj's output)
    weight: [dim, 1, K], bias: [dim]
    u: [batch, length, dim] contiguous, u[t] = silu(bias + sum_k weight[k] * x[t - K + 1 + k]) (zero padded);
       with ``reverse`` the mirrored anti-causal form u[t] = silu(bias + sum_k weight[k] * x[t + K - 1 - k]),
       i.e. the backward scan direction's conv expressed in original token order.

    u_f, u_b = conv_silu_bidir(x, weight, bias, weight_b, bias_b, backend="auto")

both directions of Vim's mixer at once (one kernel launch each way on the Triton path).

Channels-last keeps the whole mixer free of transposes: x comes straight from ``in_proj``, u goes straight
into ``x_proj`` and the scan. ``"torch"`` is the reference (F.conv1d, :func:`conv_silu_torch`); ``"triton"`` the
fused kernels of :mod:`rmeeto.ops.triton.conv`; ``"auto"`` asks the kernel policy (:mod:`rmeeto.ops.policy`).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from rmeeto.ops import policy

_INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"  # kernels may run on CPU tensors (tests)

try:  # optional: the fused kernels need Triton
    from rmeeto.ops.triton import conv as _triton_conv
except Exception:  # pragma: no cover - depends on the install
    _triton_conv = None

Tensor = torch.Tensor

__all__ = ["conv_silu", "conv_silu_torch", "conv_silu_bidir", "conv_silu_bidir_torch"]


def conv_silu_torch(x: Tensor, weight: Tensor, bias: Tensor, reverse: bool = False) -> Tensor:
    k = weight.shape[-1]
    xt = x.transpose(1, 2)
    if reverse:
        y = F.conv1d(F.pad(xt, (0, k - 1)), weight.flip(-1), bias, groups=xt.shape[1])
    else:
        y = F.conv1d(F.pad(xt, (k - 1, 0)), weight, bias, groups=xt.shape[1])
    return F.silu(y).transpose(1, 2)


def conv_silu(x: Tensor, weight: Tensor, bias: Tensor, reverse: bool = False, backend: str = "auto") -> Tensor:
    """See the module docstring. ``backend``: "auto" (the kernel policy decides: Triton for CUDA tensors),
    "torch" or "triton"."""
    if not policy.use_fused("conv", x, backend):
        return conv_silu_torch(x, weight, bias, reverse)
    if _triton_conv is None or not _triton_conv.is_available() or not (x.is_cuda or _INTERPRETING):
        raise RuntimeError("the triton conv backend needs triton and a CUDA tensor (or TRITON_INTERPRET=1)")
    return _triton_conv.conv_silu_triton(x, weight, bias, reverse)


def conv_silu_bidir_torch(x: Tensor, weight: Tensor, bias: Tensor, weight_b: Tensor, bias_b: Tensor
                          ) -> tuple[Tensor, Tensor]:
    """Reference of :func:`conv_silu_bidir`: the two single-direction convs."""
    return conv_silu_torch(x, weight, bias), conv_silu_torch(x, weight_b, bias_b, reverse=True)


def conv_silu_bidir(x: Tensor, weight: Tensor, bias: Tensor, weight_b: Tensor, bias_b: Tensor,
                    backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Both conv directions of the bidirectional mixer over one input:

        u_f, u_b = conv_silu(x, weight, bias), conv_silu(x, weight_b, bias_b, reverse=True)

    x: [batch, length, dim] (unit channel stride); weight, weight_b: [dim, 1, K]; bias, bias_b: [dim];
    u_f, u_b: [batch, length, dim]. The Triton path computes both in one kernel launch (and their backward,
    dx summed over the directions, in one more). Results equal the two single-direction calls bit for bit (the weight and
    bias gradients up to float32 summation order). ``backend`` as :func:`conv_silu`."""
    if weight_b.shape != weight.shape or bias_b.shape != bias.shape:
        raise ValueError(
            f"conv_silu_bidir: the two directions' weights differ in shape: {tuple(weight.shape)}/"
            f"{tuple(bias.shape)} vs {tuple(weight_b.shape)}/{tuple(bias_b.shape)}")
    if not policy.use_fused("conv", x, backend):
        return conv_silu_bidir_torch(x, weight, bias, weight_b, bias_b)
    if _triton_conv is None or not _triton_conv.is_available() or not (x.is_cuda or _INTERPRETING):
        raise RuntimeError("the triton conv backend needs triton and a CUDA tensor (or TRITON_INTERPRET=1)")
    if weight.shape[-1] > 4:  # the bidirectional backward kernel is written for up to 4 taps (Vim's)
        return (_triton_conv.conv_silu_triton(x, weight, bias, False),
                _triton_conv.conv_silu_triton(x, weight_b, bias_b, True))
    return _triton_conv.conv_silu_bidir_triton(x, weight, bias, weight_b, bias_b)

"""Depthwise causal (or anti-causal) conv1d fused with SiLU, on channels-last activations.

    u = conv_silu(x, weight, bias, reverse=False, backend="auto")

    x: [batch, length, dim] (any strides with unit channel stride, e.g. a slice of in_proj's output)
    weight: [dim, 1, K], bias: [dim]
    u: [batch, length, dim] contiguous, u[t] = silu(bias + sum_k weight[k] * x[t - K + 1 + k]) (zero padded);
       with ``reverse`` the mirrored anti-causal form u[t] = silu(bias + sum_k weight[k] * x[t + K - 1 - k]),
       i.e. the backward scan direction's conv expressed in original token order.

Channels-last keeps the whole mixer free of transposes: x comes straight from ``in_proj``, u goes straight
into ``x_proj`` and the scan. ``"torch"`` is the reference (F.conv1d); ``"triton"`` is one fused kernel for the
forward (one read of x, one write of u) with a backward that recomputes through the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

__all__ = ["conv_silu", "conv_silu_torch"]


def conv_silu_torch(x: Tensor, weight: Tensor, bias: Tensor, reverse: bool = False) -> Tensor:
    k = weight.shape[-1]
    xt = x.transpose(1, 2)
    if reverse:
        y = F.conv1d(F.pad(xt, (0, k - 1)), weight.flip(-1), bias, groups=xt.shape[1])
    else:
        y = F.conv1d(F.pad(xt, (k - 1, 0)), weight, bias, groups=xt.shape[1])
    return F.silu(y).transpose(1, 2)


try:  # optional: Triton is only needed for the fused CUDA kernel
    import triton
    import triton.language as tl

    @triton.jit
    def _conv_silu_fwd(
        x_ptr, w_ptr, b_ptr, out_ptr,
        L, D,
        stride_xb, stride_xl,
        stride_ob, stride_ol,
        K: tl.constexpr, REVERSE: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        pid_b = tl.program_id(0)
        pid_l = tl.program_id(1)
        pid_d = tl.program_id(2)
        offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
        offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        acc = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
        acc += tl.load(b_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[None, :]
        x_base = x_ptr + pid_b * stride_xb
        for k in tl.static_range(K):
            wk = tl.load(w_ptr + offs_d * K + k, mask=mask_d, other=0.0).to(tl.float32)
            if REVERSE:
                src = offs_l + (K - 1 - k)
            else:
                src = offs_l - (K - 1) + k
            m = (src >= 0) & (src < L)
            xv = tl.load(x_base + src[:, None] * stride_xl + offs_d[None, :], mask=m[:, None] & mask_d[None, :],
                         other=0.0).to(tl.float32)
            acc += xv * wk[None, :]
        out = acc * tl.sigmoid(acc)
        mask = (offs_l < L)[:, None] & mask_d[None, :]
        tl.store(out_ptr + pid_b * stride_ob + offs_l[:, None] * stride_ol + offs_d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=mask)

    _HAS_TRITON = True
except Exception:  # pragma: no cover - depends on the install
    _HAS_TRITON = False


def _conv_silu_triton_fwd(x: Tensor, weight: Tensor, bias: Tensor, reverse: bool) -> Tensor:
    batch, length, dim = x.shape
    if x.stride(2) != 1:
        x = x.contiguous()
    out = torch.empty(batch, length, dim, device=x.device, dtype=x.dtype)
    block_l, block_d = 32, 128
    grid = (batch, triton.cdiv(length, block_l), triton.cdiv(dim, block_d))
    _conv_silu_fwd[grid](
        x, weight.reshape(dim, -1).contiguous(), bias.contiguous(), out, length, dim,
        x.stride(0), x.stride(1), out.stride(0), out.stride(1),
        K=weight.shape[-1], REVERSE=reverse, BLOCK_L=block_l, BLOCK_D=block_d, num_warps=4,
    )
    return out


class _ConvSiluTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, reverse):
        ctx.save_for_backward(x, weight, bias)
        ctx.reverse = reverse
        return _conv_silu_triton_fwd(x, weight, bias, reverse)

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias = ctx.saved_tensors
        with torch.enable_grad():
            xs, ws, bs = (t.detach().requires_grad_(t.requires_grad) for t in (x, weight, bias))
            out = conv_silu_torch(xs, ws, bs, ctx.reverse)
            inputs = [t for t in (xs, ws, bs) if t.requires_grad]
            grads = iter(torch.autograd.grad(out, inputs, grad) if inputs else ())
        return tuple(next(grads) if t.requires_grad else None for t in (xs, ws, bs)) + (None,)


def conv_silu(x: Tensor, weight: Tensor, bias: Tensor, reverse: bool = False, backend: str = "auto") -> Tensor:
    """See the module docstring. ``backend``: "auto" (Triton on CUDA when available), "torch" or "triton"."""
    if backend == "auto":
        backend = "triton" if (x.is_cuda and _HAS_TRITON) else "torch"
    if backend == "torch":
        return conv_silu_torch(x, weight, bias, reverse)
    if backend == "triton":
        if not (_HAS_TRITON and x.is_cuda):
            raise RuntimeError("the triton conv backend needs triton and a CUDA tensor")
        if weight.dtype != x.dtype:  # autocast: the conv runs in the activation dtype
            weight, bias = weight.to(x.dtype), bias.to(x.dtype)
        return _ConvSiluTriton.apply(x, weight, bias, reverse)
    raise ValueError(f"conv backend {backend!r} is not valid; choose from 'auto', 'torch', 'triton'")

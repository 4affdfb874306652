"""Depthwise causal (or anti-causal) conv1d fused with SiLU, on channels-last activations.

    u = conv_silu(x, weight, bias, reverse=False, backend="auto")

    x: [batch, length, dim] (any strides with unit channel stride, e.g. a slice of in_proj's output)
    weight: [dim, 1, K], bias: [dim]
    u: [batch, length, dim] contiguous, u[t] = silu(bias + sum_k weight[k] * x[t - K + 1 + k]) (zero padded);
       with ``reverse`` the mirrored anti-causal form u[t] = silu(bias + sum_k weight[k] * x[t + K - 1 - k]),
       i.e. the backward scan direction's conv expressed in original token order.

Channels-last keeps the whole mixer free of transposes: x comes straight from ``in_proj``, u goes straight
into ``x_proj`` and the scan. ``"torch"`` is the reference (F.conv1d); ``"triton"`` is one fused kernel for the
forward (one read of x, one write of u) and one for the backward (recomputes the pre-activation; dx, and
per-tile partial sums of the weight and bias gradients that one ``sum`` reduces; PyTorch's depthwise conv
backward took ~20 ms of a merged Vim-S training step on an H200).
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

    @triton.jit
    def _preact(x_base, w_ptr, bias, t, offs_d, mask_d, L, stride_xl,
                K: tl.constexpr, REVERSE: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
        """Pre-activation a[t] = bias + sum_k w[k] x[src_k(t)] for a tile of tokens t (float32)."""
        acc = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32) + bias[None, :]
        for k in tl.static_range(K):
            wk = tl.load(w_ptr + offs_d * K + k, mask=mask_d, other=0.0).to(tl.float32)
            if REVERSE:
                src = t + (K - 1 - k)
            else:
                src = t - (K - 1) + k
            m = (src >= 0) & (src < L)
            xv = tl.load(x_base + src[:, None] * stride_xl + offs_d[None, :], mask=m[:, None] & mask_d[None, :],
                         other=0.0).to(tl.float32)
            acc += xv * wk[None, :]
        return acc

    @triton.jit
    def _conv_silu_bwd(
        x_ptr, w_ptr, b_ptr, g_ptr, dx_ptr, dw_ptr, db_ptr,
        L, D,
        stride_xb, stride_xl, stride_gb, stride_gl, stride_dxb, stride_dxl,
        K: tl.constexpr, REVERSE: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """Backward of u = silu(conv(x)) for a tile of tokens x channels, recomputing the pre-activation:
        ga[t] = g[t] * silu'(a[t]); dx[s] = sum_k w[k] ga[t_k(s)] (the K tokens whose window holds s);
        dw[k] / db partial sums of this tile written to [tile, D, K] / [tile, D] (summed by the caller:
        deterministic, no atomics)."""
        pid_b = tl.program_id(0)
        pid_l = tl.program_id(1)
        pid_d = tl.program_id(2)
        tile = pid_b * tl.num_programs(1) + pid_l
        offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
        offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        bias = tl.load(b_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        x_base = x_ptr + pid_b * stride_xb
        g_base = g_ptr + pid_b * stride_gb
        dx = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
        # j = K - 1 is the tile's own tokens (t = s): its ga also feeds dw and db
        for j in tl.static_range(K):
            if REVERSE:
                t = offs_l - (K - 1 - j)
            else:
                t = offs_l + (K - 1 - j)
            mt = (t >= 0) & (t < L)
            a = _preact(x_base, w_ptr, bias, t, offs_d, mask_d, L, stride_xl, K, REVERSE, BLOCK_L, BLOCK_D)
            sig = tl.sigmoid(a)
            g = tl.load(g_base + t[:, None] * stride_gl + offs_d[None, :], mask=mt[:, None] & mask_d[None, :],
                        other=0.0).to(tl.float32)
            ga = g * sig * (1.0 + a * (1.0 - sig))
            wj = tl.load(w_ptr + offs_d * K + j, mask=mask_d, other=0.0).to(tl.float32)
            dx += ga * wj[None, :]
            if j == K - 1:
                tl.store(db_ptr + tile * D + offs_d, tl.sum(ga, axis=0), mask=mask_d)
                for k in tl.static_range(K):
                    if REVERSE:
                        src = offs_l + (K - 1 - k)
                    else:
                        src = offs_l - (K - 1) + k
                    m = (src >= 0) & (src < L)
                    xv = tl.load(x_base + src[:, None] * stride_xl + offs_d[None, :],
                                 mask=m[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
                    tl.store(dw_ptr + (tile * D + offs_d) * K + k, tl.sum(ga * xv, axis=0), mask=mask_d)
        mask = (offs_l < L)[:, None] & mask_d[None, :]
        tl.store(dx_ptr + pid_b * stride_dxb + offs_l[:, None] * stride_dxl + offs_d[None, :],
                 dx.to(dx_ptr.dtype.element_ty), mask=mask)

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
        return _conv_silu_triton_bwd(x, weight, bias, grad, ctx.reverse) + (None,)


def _conv_silu_triton_bwd(x: Tensor, weight: Tensor, bias: Tensor, grad: Tensor, reverse: bool):
    batch, length, dim = x.shape
    K = weight.shape[-1]
    if x.stride(2) != 1:
        x = x.contiguous()
    if grad.stride(2) != 1:
        grad = grad.contiguous()
    block_l, block_d = 64, 64
    n_l = triton.cdiv(length, block_l)
    dx = torch.empty(batch, length, dim, device=x.device, dtype=x.dtype)
    dw = torch.empty(batch * n_l, dim, K, device=x.device, dtype=torch.float32)
    db = torch.empty(batch * n_l, dim, device=x.device, dtype=torch.float32)
    _conv_silu_bwd[(batch, n_l, triton.cdiv(dim, block_d))](
        x, weight.reshape(dim, -1).contiguous(), bias.contiguous(), grad, dx, dw, db, length, dim,
        x.stride(0), x.stride(1), grad.stride(0), grad.stride(1), dx.stride(0), dx.stride(1),
        K=K, REVERSE=reverse, BLOCK_L=block_l, BLOCK_D=block_d, num_warps=4,
    )
    return dx, dw.sum(0).reshape(weight.shape).to(weight.dtype), db.sum(0).to(bias.dtype)


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

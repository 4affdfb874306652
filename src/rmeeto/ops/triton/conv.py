"""Triton kernels of the depthwise causal conv1d + SiLU (:mod:`rmeeto.ops.conv` holds the contract, the
PyTorch reference and the dispatch): one fused kernel for the forward (one read of x, one write of u) and, for
kernels of up to 4 taps (Vim's), one for the backward (recomputes the pre-activation from seven shifted rows of
x loaded once; dx, and per-tile partial sums of the weight and bias gradients that one ``sum`` reduces;
PyTorch's depthwise conv backward took ~20 ms of a merged Vim-S training step on an H200).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rmeeto.ops.triton._launch import launch

Tensor = torch.Tensor

__all__ = ["conv_silu_triton", "is_available", "FWD_CONFIG", "BWD_CONFIG", "CANDIDATE_BWD"]


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
    def _row_shift(base, s, m: tl.constexpr, offs_d, mask_d, L, stride_l, REVERSE: tl.constexpr):
        """Rows p = s + m (s - m with REVERSE) of a [length, channels] tensor, zero outside [0, L); float32."""
        if REVERSE:
            p = s - m
        else:
            p = s + m
        ok = (p >= 0) & (p < L)
        return tl.load(base + p[:, None] * stride_l + offs_d[None, :], mask=ok[:, None] & mask_d[None, :],
                       other=0.0).to(tl.float32)

    @triton.jit
    def _silu_grad(a, g):
        sig = tl.sigmoid(a)
        return g * sig * (1.0 + a * (1.0 - sig))

    @triton.jit
    def _conv_silu_bwd(
        x_ptr, w_ptr, b_ptr, g_ptr, dx_ptr, dw_ptr, db_ptr,
        L, D,
        stride_xb, stride_xl, stride_gb, stride_gl, stride_dxb, stride_dxl,
        REVERSE: tl.constexpr, SPAN: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """Backward of u = silu(conv(x)) for a 4-tap kernel (shorter ones come zero-padded in front), on a tile
        of tokens s x channels. With a_e the pre-activation at token s + e (mirrored with REVERSE) and
        ga_e = g[s + e] * silu'(a_e):  dx[s] = sum_e w[3 - e] ga_e,  dw[k] += sum_s ga_0 x[s - 3 + k],
        db += sum_s ga_0. A program covers SPAN tokens in tiles of BLOCK_L; the seven shifted rows of x every
        a_e of a tile needs are loaded once; its dw / db partial sums go to [program, D, 4] / [program, D]
        (summed by the caller: deterministic, no atomics)."""
        pid_b = tl.program_id(0)
        pid_l = tl.program_id(1)
        tile = pid_b * tl.num_programs(1) + pid_l
        offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        bias = tl.load(b_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[None, :]
        w0 = tl.load(w_ptr + offs_d * 4 + 0, mask=mask_d, other=0.0).to(tl.float32)[None, :]
        w1 = tl.load(w_ptr + offs_d * 4 + 1, mask=mask_d, other=0.0).to(tl.float32)[None, :]
        w2 = tl.load(w_ptr + offs_d * 4 + 2, mask=mask_d, other=0.0).to(tl.float32)[None, :]
        w3 = tl.load(w_ptr + offs_d * 4 + 3, mask=mask_d, other=0.0).to(tl.float32)[None, :]
        xb = x_ptr + pid_b * stride_xb
        gb = g_ptr + pid_b * stride_gb
        db = tl.zeros([BLOCK_D], tl.float32)
        dw0 = tl.zeros([BLOCK_D], tl.float32)
        dw1 = tl.zeros([BLOCK_D], tl.float32)
        dw2 = tl.zeros([BLOCK_D], tl.float32)
        dw3 = tl.zeros([BLOCK_D], tl.float32)
        for l0 in range(pid_l * SPAN, pid_l * SPAN + SPAN, BLOCK_L):
            s = l0 + tl.arange(0, BLOCK_L)
            xm3 = _row_shift(xb, s, -3, offs_d, mask_d, L, stride_xl, REVERSE)
            xm2 = _row_shift(xb, s, -2, offs_d, mask_d, L, stride_xl, REVERSE)
            xm1 = _row_shift(xb, s, -1, offs_d, mask_d, L, stride_xl, REVERSE)
            x0 = _row_shift(xb, s, 0, offs_d, mask_d, L, stride_xl, REVERSE)
            xp1 = _row_shift(xb, s, 1, offs_d, mask_d, L, stride_xl, REVERSE)
            xp2 = _row_shift(xb, s, 2, offs_d, mask_d, L, stride_xl, REVERSE)
            xp3 = _row_shift(xb, s, 3, offs_d, mask_d, L, stride_xl, REVERSE)
            ga = _silu_grad(bias + w0 * xm3 + w1 * xm2 + w2 * xm1 + w3 * x0,
                            _row_shift(gb, s, 0, offs_d, mask_d, L, stride_gl, REVERSE))
            db += tl.sum(ga, axis=0)
            dw0 += tl.sum(ga * xm3, axis=0)
            dw1 += tl.sum(ga * xm2, axis=0)
            dw2 += tl.sum(ga * xm1, axis=0)
            dw3 += tl.sum(ga * x0, axis=0)
            dx = w3 * ga
            dx += w2 * _silu_grad(bias + w0 * xm2 + w1 * xm1 + w2 * x0 + w3 * xp1,
                                  _row_shift(gb, s, 1, offs_d, mask_d, L, stride_gl, REVERSE))
            dx += w1 * _silu_grad(bias + w0 * xm1 + w1 * x0 + w2 * xp1 + w3 * xp2,
                                  _row_shift(gb, s, 2, offs_d, mask_d, L, stride_gl, REVERSE))
            dx += w0 * _silu_grad(bias + w0 * x0 + w1 * xp1 + w2 * xp2 + w3 * xp3,
                                  _row_shift(gb, s, 3, offs_d, mask_d, L, stride_gl, REVERSE))
            mask = (s < L)[:, None] & mask_d[None, :]
            tl.store(dx_ptr + pid_b * stride_dxb + s[:, None] * stride_dxl + offs_d[None, :],
                     dx.to(dx_ptr.dtype.element_ty), mask=mask)
        tl.store(db_ptr + tile * D + offs_d, db, mask=mask_d)
        dw = dw_ptr + (tile * D + offs_d) * 4
        tl.store(dw + 0, dw0, mask=mask_d)
        tl.store(dw + 1, dw1, mask=mask_d)
        tl.store(dw + 2, dw2, mask=mask_d)
        tl.store(dw + 3, dw3, mask=mask_d)

    _HAS_TRITON = True
except Exception:  # pragma: no cover - depends on the install
    _HAS_TRITON = False


# Tiles of the forward kernel.
FWD_CONFIG = {"BLOCK_L": 32, "BLOCK_D": 128, "num_warps": 4}
# Tiles of the backward kernel: a program covers SPAN tokens in steps of BLOCK_L, BLOCK_D channels.
# benchmarks/bench_conv_gpu.py times the candidates.
BWD_CONFIG = {"SPAN": 32, "BLOCK_L": 8, "BLOCK_D": 64, "num_warps": 2, "num_stages": 1}
CANDIDATE_BWD = [  # ms at Vim-S shapes on an H100 (session 3, runs 5 and 6)
    BWD_CONFIG,  # 0.350
    {"SPAN": 16, "BLOCK_L": 16, "BLOCK_D": 64, "num_warps": 4, "num_stages": 1},  # 0.369
    {"SPAN": 32, "BLOCK_L": 32, "BLOCK_D": 64, "num_warps": 8, "num_stages": 1},  # 0.458
    {"SPAN": 16, "BLOCK_L": 16, "BLOCK_D": 64, "num_warps": 8, "num_stages": 1},  # 0.581
    {"SPAN": 32, "BLOCK_L": 8, "BLOCK_D": 128, "num_warps": 4, "num_stages": 1},  # 0.665
]


def _dense(t: Tensor) -> Tensor:
    """t itself when contiguous (the kernels index weight [dim, 1, K] as [dim, K] and bias [dim] flat)."""
    return t if t.is_contiguous() else t.contiguous()


def _conv_silu_triton_fwd(x: Tensor, weight: Tensor, bias: Tensor, reverse: bool) -> Tensor:
    """Forward launcher: x [batch, length, dim] (unit channel stride) -> u [batch, length, dim] contiguous."""
    batch, length, dim = x.shape
    if x.stride(2) != 1:
        x = x.contiguous()
    out = torch.empty(batch, length, dim, device=x.device, dtype=x.dtype)
    cfg = FWD_CONFIG
    block_l, block_d = cfg["BLOCK_L"], cfg["BLOCK_D"]
    grid = (batch, (length + block_l - 1) // block_l, (dim + block_d - 1) // block_d)
    launch(
        _conv_silu_fwd, grid, x.device,
        x, _dense(weight), _dense(bias), out, length, dim, x.stride(0), x.stride(1), out.stride(0), out.stride(1),
        K=weight.shape[-1], REVERSE=bool(reverse), BLOCK_L=block_l, BLOCK_D=block_d, num_warps=cfg["num_warps"],
    )
    return out


def is_available() -> bool:
    """True when Triton imports (the kernels then run on CUDA tensors, or on CPU under TRITON_INTERPRET=1)."""
    return _HAS_TRITON


def _conv_silu_triton_bwd(x: Tensor, weight: Tensor, bias: Tensor, grad: Tensor, reverse: bool):
    """Backward launcher: (dx [batch, length, dim], dweight like weight, dbias like bias); kernels of up to 4
    taps on the fused kernel, longer ones (not used by Vim) in PyTorch."""
    K = weight.shape[-1]
    if K > 4:
        return _conv_silu_bwd_torch(x, weight, bias, grad, reverse)
    batch, length, dim = x.shape
    if x.stride(2) != 1:
        x = x.contiguous()
    if grad.stride(2) != 1:
        grad = grad.contiguous()
    # the kernel reads 4 taps per channel: shorter kernels get zero taps in front
    w4 = _dense(weight) if K == 4 else F.pad(weight.reshape(dim, K), (4 - K, 0)).contiguous()
    cfg = BWD_CONFIG
    block_l, block_d, span = cfg["BLOCK_L"], cfg["BLOCK_D"], cfg["SPAN"]
    n_l = (length + span - 1) // span
    dx = torch.empty(batch, length, dim, device=x.device, dtype=x.dtype)
    dw = torch.empty(batch * n_l, dim, 4, device=x.device, dtype=torch.float32)
    db = torch.empty(batch * n_l, dim, device=x.device, dtype=torch.float32)
    launch(
        _conv_silu_bwd, (batch, n_l, (dim + block_d - 1) // block_d), x.device,
        x, w4, _dense(bias), grad, dx, dw, db, length, dim,
        x.stride(0), x.stride(1), grad.stride(0), grad.stride(1), dx.stride(0), dx.stride(1),
        REVERSE=bool(reverse), SPAN=span, BLOCK_L=block_l, BLOCK_D=block_d, num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )
    dw = dw.sum(0)
    if K < 4:
        dw = dw[:, 4 - K:]
    return dx, dw.reshape(weight.shape).to(weight.dtype), db.sum(0).to(bias.dtype)


def _conv_silu_bwd_torch(x: Tensor, weight: Tensor, bias: Tensor, grad: Tensor, reverse: bool):
    """The backward in PyTorch for any number of taps K. With xp = x zero-padded by K - 1 tokens
    (in front; behind with ``reverse``) the pre-activation is a[t] = bias + sum_k w'[k] xp[t + k], w' the taps
    (mirrored with ``reverse``), so dw'[k] = sum ga[t] xp[t + k] and dxp[t + k] += w'[k] ga[t]. Computed in float32
    (float64 inputs in float64)."""
    batch, length, dim = x.shape
    K = weight.shape[-1]
    ct = torch.promote_types(x.dtype, torch.float32)  # at least float32
    w = weight.reshape(dim, K).to(ct)
    if reverse:
        w = w.flip(-1)
    xp = F.pad(x.to(ct), (0, 0, 0, K - 1) if reverse else (0, 0, K - 1, 0))
    a = bias.to(ct) + sum(w[:, k] * xp[:, k:k + length] for k in range(K))
    sig = torch.sigmoid(a)
    ga = grad.to(ct) * sig * (1 + a * (1 - sig))
    dw = torch.stack([(ga * xp[:, k:k + length]).sum((0, 1)) for k in range(K)], dim=-1)
    dxp = torch.zeros_like(xp)
    for k in range(K):
        dxp[:, k:k + length] += w[:, k] * ga
    dx = (dxp[:, :length] if reverse else dxp[:, K - 1:]).contiguous()  # a fresh tensor, as the kernel's
    if reverse:
        dw = dw.flip(-1)
    return dx.to(x.dtype), dw.reshape(weight.shape).to(weight.dtype), ga.sum((0, 1)).to(bias.dtype)


# --------------------------------------------------------------------------------------- custom ops
@torch.library.custom_op("rmeeto::conv_silu", mutates_args=())
def _conv_silu_op(x: Tensor, weight: Tensor, bias: Tensor, reverse: bool) -> Tensor:
    return _conv_silu_triton_fwd(x, weight, bias, reverse)


@_conv_silu_op.register_fake
def _(x, weight, bias, reverse):
    return torch.empty(x.shape, device=x.device, dtype=x.dtype)


@torch.library.custom_op("rmeeto::conv_silu_bwd", mutates_args=())
def _conv_silu_bwd_op(x: Tensor, weight: Tensor, bias: Tensor, grad: Tensor,
                      reverse: bool) -> tuple[Tensor, Tensor, Tensor]:
    return _conv_silu_triton_bwd(x, weight, bias, grad, reverse)


@_conv_silu_bwd_op.register_fake
def _(x, weight, bias, grad, reverse):
    return (torch.empty(x.shape, device=x.device, dtype=x.dtype), torch.empty_like(weight),
            torch.empty_like(bias))


def _setup_context(ctx, inputs, output):
    x, weight, bias, reverse = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.reverse = reverse


def _backward(ctx, grad):
    return _conv_silu_bwd_op(*ctx.saved_tensors, grad, ctx.reverse) + (None,)


_conv_silu_op.register_autograd(_backward, setup_context=_setup_context)


class _ConvSilu(torch.autograd.Function):
    """Eager twin of the custom op: the same launchers, without torch.library's dispatch."""

    @staticmethod
    def forward(ctx, x, weight, bias, reverse):
        ctx.save_for_backward(x, weight, bias)
        ctx.reverse = reverse
        return _conv_silu_triton_fwd(x, weight, bias, reverse)

    @staticmethod
    def backward(ctx, grad):
        return _conv_silu_triton_bwd(*ctx.saved_tensors, grad, ctx.reverse) + (None,)


def conv_silu_triton(x: Tensor, weight: Tensor, bias: Tensor, reverse: bool) -> Tensor:
    """u = silu(conv(x)) by the kernels; shapes as :func:`rmeeto.ops.conv.conv_silu`. The custom op while
    torch.compile traces, else the autograd function, else (no gradient needed) the launcher."""
    if weight.dtype != x.dtype:  # autocast: the conv runs in the activation dtype
        weight, bias = weight.to(x.dtype), bias.to(x.dtype)
    reverse = bool(reverse)
    if torch.compiler.is_compiling():
        return _conv_silu_op(x, weight, bias, reverse)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or bias.requires_grad):
        return _ConvSilu.apply(x, weight, bias, reverse)
    return _conv_silu_triton_fwd(x, weight, bias, reverse)

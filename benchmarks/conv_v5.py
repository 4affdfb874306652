"""The conv+SiLU Triton kernels as they stood at the end of session 5 (git 62ed9c6,
src/rmeeto/ops/triton/conv.py), kept verbatim (kernels, tile configs, launchers) as the oracle the new kernels
are tested against bit for bit (tests/ops/test_conv_kernels.py, tests/ops/test_gpu_conv.py) and as the
baseline benchmarks/bench_conv_gpu.py and benchmarks/compile_conv.py put beside them. Not part of the library;
no custom ops are registered here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rmeeto.ops.triton._launch import launch

Tensor = torch.Tensor


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


# ------------------------------------------------------------------------------------ both directions
# Vim's mixer runs the causal conv (conv1d) and the anti-causal one (conv1d_b) over the same x. One launch
# each way serves both: a program computes both directions of its tile with the single-direction code
# unrolled twice (the direction is a compile-time constant in each copy, so the arithmetic, and hence every
# bit of u, equals the single-direction kernels'), and the backward sums the two directions' dx in registers.
if _HAS_TRITON:
    @triton.jit
    def _in_x_dtype(v, x_ptr):
        """A weight value as the conv computes with it: rounded to x's dtype, as float32."""
        return v.to(x_ptr.dtype.element_ty).to(tl.float32)

    @triton.jit
    def _load_w(w_ptr, offs_d, k: tl.constexpr, mask_d, x_ptr):
        return _in_x_dtype(tl.load(w_ptr + offs_d * 4 + k, mask=mask_d, other=0.0), x_ptr)[None, :]

    @triton.jit
    def _conv_silu_bidir_fwd(
        x_ptr, wf_ptr, bf_ptr, wb_ptr, bb_ptr, outf_ptr, outb_ptr,
        L, D,
        stride_xb, stride_xl,
        stride_ob, stride_ol,
        K: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """outf = silu(causal conv of x with wf, bf), outb = silu(anti-causal conv with wb, bb); outf, outb are
        [batch, L, D] (strides stride_ob, stride_ol, 1), x [batch, L, D] (unit channel stride). Weights and
        biases of any float dtype are rounded to x's dtype as they are loaded (autocast's cast, without
        its four cast kernels per call)."""
        pid_b = tl.program_id(0)
        pid_l = tl.program_id(1)
        pid_d = tl.program_id(2)
        offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
        offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        mask = (offs_l < L)[:, None] & mask_d[None, :]
        x_base = x_ptr + pid_b * stride_xb
        for r in tl.static_range(2):  # r == 1: the anti-causal direction (REVERSE of the single kernel)
            if r == 1:
                w_ptr = wb_ptr
                b_ptr = bb_ptr
                out_ptr = outb_ptr
            else:
                w_ptr = wf_ptr
                b_ptr = bf_ptr
                out_ptr = outf_ptr
            acc = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
            acc += _in_x_dtype(tl.load(b_ptr + offs_d, mask=mask_d, other=0.0), x_ptr)[None, :]
            for k in tl.static_range(K):
                wk = _in_x_dtype(tl.load(w_ptr + offs_d * K + k, mask=mask_d, other=0.0), x_ptr)
                if r == 1:
                    src = offs_l + (K - 1 - k)
                else:
                    src = offs_l - (K - 1) + k
                m = (src >= 0) & (src < L)
                xv = tl.load(x_base + src[:, None] * stride_xl + offs_d[None, :],
                             mask=m[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
                acc += xv * wk[None, :]
            out = acc * tl.sigmoid(acc)
            tl.store(out_ptr + pid_b * stride_ob + offs_l[:, None] * stride_ol + offs_d[None, :],
                     out.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _conv_dir_bwd(xm3, xm2, xm1, x0, xp1, xp2, xp3, g0, g1, g2, g3, w0, w1, w2, w3, bias):
        """One direction of :func:`_conv_silu_bwd`'s tile arithmetic (same expressions, so the same bits), on
        the rows x[s + m] (m = -3..3, mirrored for the anti-causal direction) and g[s + e] (e = 0..3).
        Returns dx and the tile's sums for db, dw0..dw3."""
        ga = _silu_grad(bias + w0 * xm3 + w1 * xm2 + w2 * xm1 + w3 * x0, g0)
        db = tl.sum(ga, axis=0)
        dw0 = tl.sum(ga * xm3, axis=0)
        dw1 = tl.sum(ga * xm2, axis=0)
        dw2 = tl.sum(ga * xm1, axis=0)
        dw3 = tl.sum(ga * x0, axis=0)
        dx = w3 * ga
        dx += w2 * _silu_grad(bias + w0 * xm2 + w1 * xm1 + w2 * x0 + w3 * xp1, g1)
        dx += w1 * _silu_grad(bias + w0 * xm1 + w1 * x0 + w2 * xp1 + w3 * xp2, g2)
        dx += w0 * _silu_grad(bias + w0 * x0 + w1 * xp1 + w2 * xp2 + w3 * xp3, g3)
        return dx, db, dw0, dw1, dw2, dw3

    @triton.jit
    def _conv_silu_bidir_bwd(
        x_ptr, wf_ptr, bf_ptr, wb_ptr, bb_ptr, gf_ptr, gb_ptr, dx_ptr, dw_ptr, db_ptr,
        L, D,
        stride_xb, stride_xl, stride_gb, stride_gl, stride_dxb, stride_dxl,
        SPAN: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """Backward of both directions of :func:`_conv_silu_bidir_fwd` (4-tap weights [D, 4], shorter ones
        zero-padded in front): gf / gb are the gradients of outf / outb (same strides), dx = dx_f + dx_b
        (each rounded to x's dtype first, so dx is bit for bit what adding the two single-direction dx gives),
        dw / db partial sums per program go to [program, 2, D, 4] / [program, 2, D] (float32; the weights
        are rounded to x's dtype as in the forward). The seven shifted rows of
        x are loaded once per tile and serve both directions (the anti-causal rows are the same rows mirrored)."""
        pid_b = tl.program_id(0)
        pid_l = tl.program_id(1)
        tile = pid_b * tl.num_programs(1) + pid_l
        offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        bias_f = _in_x_dtype(tl.load(bf_ptr + offs_d, mask=mask_d, other=0.0), x_ptr)[None, :]
        f0 = _load_w(wf_ptr, offs_d, 0, mask_d, x_ptr)
        f1 = _load_w(wf_ptr, offs_d, 1, mask_d, x_ptr)
        f2 = _load_w(wf_ptr, offs_d, 2, mask_d, x_ptr)
        f3 = _load_w(wf_ptr, offs_d, 3, mask_d, x_ptr)
        bias_b = _in_x_dtype(tl.load(bb_ptr + offs_d, mask=mask_d, other=0.0), x_ptr)[None, :]
        b0 = _load_w(wb_ptr, offs_d, 0, mask_d, x_ptr)
        b1 = _load_w(wb_ptr, offs_d, 1, mask_d, x_ptr)
        b2 = _load_w(wb_ptr, offs_d, 2, mask_d, x_ptr)
        b3 = _load_w(wb_ptr, offs_d, 3, mask_d, x_ptr)
        xb = x_ptr + pid_b * stride_xb
        gfb = gf_ptr + pid_b * stride_gb
        gbb = gb_ptr + pid_b * stride_gb
        dbf = tl.zeros([BLOCK_D], tl.float32)
        dwf0 = tl.zeros([BLOCK_D], tl.float32)
        dwf1 = tl.zeros([BLOCK_D], tl.float32)
        dwf2 = tl.zeros([BLOCK_D], tl.float32)
        dwf3 = tl.zeros([BLOCK_D], tl.float32)
        dbb = tl.zeros([BLOCK_D], tl.float32)
        dwb0 = tl.zeros([BLOCK_D], tl.float32)
        dwb1 = tl.zeros([BLOCK_D], tl.float32)
        dwb2 = tl.zeros([BLOCK_D], tl.float32)
        dwb3 = tl.zeros([BLOCK_D], tl.float32)
        for l0 in range(pid_l * SPAN, pid_l * SPAN + SPAN, BLOCK_L):
            s = l0 + tl.arange(0, BLOCK_L)
            xm3 = _row_shift(xb, s, -3, offs_d, mask_d, L, stride_xl, False)
            xm2 = _row_shift(xb, s, -2, offs_d, mask_d, L, stride_xl, False)
            xm1 = _row_shift(xb, s, -1, offs_d, mask_d, L, stride_xl, False)
            x0 = _row_shift(xb, s, 0, offs_d, mask_d, L, stride_xl, False)
            xp1 = _row_shift(xb, s, 1, offs_d, mask_d, L, stride_xl, False)
            xp2 = _row_shift(xb, s, 2, offs_d, mask_d, L, stride_xl, False)
            xp3 = _row_shift(xb, s, 3, offs_d, mask_d, L, stride_xl, False)
            dx_f, db, dw0, dw1, dw2, dw3 = _conv_dir_bwd(
                xm3, xm2, xm1, x0, xp1, xp2, xp3,
                _row_shift(gfb, s, 0, offs_d, mask_d, L, stride_gl, False),
                _row_shift(gfb, s, 1, offs_d, mask_d, L, stride_gl, False),
                _row_shift(gfb, s, 2, offs_d, mask_d, L, stride_gl, False),
                _row_shift(gfb, s, 3, offs_d, mask_d, L, stride_gl, False),
                f0, f1, f2, f3, bias_f)
            dbf += db
            dwf0 += dw0
            dwf1 += dw1
            dwf2 += dw2
            dwf3 += dw3
            dx_b, db, dw0, dw1, dw2, dw3 = _conv_dir_bwd(
                xp3, xp2, xp1, x0, xm1, xm2, xm3,
                _row_shift(gbb, s, 0, offs_d, mask_d, L, stride_gl, True),
                _row_shift(gbb, s, 1, offs_d, mask_d, L, stride_gl, True),
                _row_shift(gbb, s, 2, offs_d, mask_d, L, stride_gl, True),
                _row_shift(gbb, s, 3, offs_d, mask_d, L, stride_gl, True),
                b0, b1, b2, b3, bias_b)
            dbb += db
            dwb0 += dw0
            dwb1 += dw1
            dwb2 += dw2
            dwb3 += dw3
            # round each direction to the output dtype before adding, as the two single-direction kernels
            # followed by autograd's add do (a no-op for float32)
            dx_f = dx_f.to(dx_ptr.dtype.element_ty).to(tl.float32)
            dx_b = dx_b.to(dx_ptr.dtype.element_ty).to(tl.float32)
            mask = (s < L)[:, None] & mask_d[None, :]
            tl.store(dx_ptr + pid_b * stride_dxb + s[:, None] * stride_dxl + offs_d[None, :],
                     (dx_f + dx_b).to(dx_ptr.dtype.element_ty), mask=mask)
        dbp = db_ptr + (tile * 2 * D) + offs_d
        tl.store(dbp, dbf, mask=mask_d)
        tl.store(dbp + D, dbb, mask=mask_d)
        dw = dw_ptr + (tile * 2 * D + offs_d) * 4
        tl.store(dw + 0, dwf0, mask=mask_d)
        tl.store(dw + 1, dwf1, mask=mask_d)
        tl.store(dw + 2, dwf2, mask=mask_d)
        tl.store(dw + 3, dwf3, mask=mask_d)
        dw += D * 4
        tl.store(dw + 0, dwb0, mask=mask_d)
        tl.store(dw + 1, dwb1, mask=mask_d)
        tl.store(dw + 2, dwb2, mask=mask_d)
        tl.store(dw + 3, dwb3, mask=mask_d)


def _conv_silu_bidir_triton_fwd(x: Tensor, wf: Tensor, bf: Tensor, wb: Tensor, bb: Tensor) -> tuple[Tensor, Tensor]:
    """(u_f, u_b), contiguous [batch, length, dim] each: causal with (wf, bf), anti-causal with (wb, bb).
    Two tensors rather than halves of one buffer: outputs that alias each other would keep the op from
    becoming a custom op (torch.compile) and cost zero-fills and copies in autograd's backward."""
    batch, length, dim = x.shape
    if x.stride(2) != 1:
        x = x.contiguous()
    out = torch.empty(batch, length, dim, device=x.device, dtype=x.dtype)
    out_b = torch.empty_like(out)
    if out.numel() == 0:
        return out, out_b
    block_l, block_d = 32, 128
    grid = (batch, triton.cdiv(length, block_l), triton.cdiv(dim, block_d))
    launch(
        _conv_silu_bidir_fwd, grid, x.device,
        x, wf.reshape(dim, -1).contiguous(), bf.contiguous(), wb.reshape(dim, -1).contiguous(), bb.contiguous(),
        out, out_b, length, dim, x.stride(0), x.stride(1), out.stride(0), out.stride(1),
        K=wf.shape[-1], BLOCK_L=block_l, BLOCK_D=block_d, num_warps=4,
    )
    return out, out_b


def _conv_silu_bidir_triton_bwd(x: Tensor, wf: Tensor, bf: Tensor, wb: Tensor, bb: Tensor, gf: Tensor, gb: Tensor):
    """(dx, dwf, dbf, dwb, dbb) of (u_f, u_b) = _conv_silu_bidir_triton_fwd(...) for their grads gf, gb."""
    batch, length, dim = x.shape
    K = wf.shape[-1]
    if x.stride(2) != 1:
        x = x.contiguous()
    if gf.stride(2) != 1 or gb.stride() != gf.stride():
        gf, gb = gf.contiguous(), gb.contiguous()
    cfg = BWD_CONFIG
    block_l, block_d, span = cfg["BLOCK_L"], cfg["BLOCK_D"], cfg["SPAN"]
    n_l = triton.cdiv(length, span)
    dx = torch.empty(batch, length, dim, device=x.device, dtype=x.dtype)
    dw = torch.empty(batch * n_l, 2, dim, 4, device=x.device, dtype=torch.float32)
    db = torch.empty(batch * n_l, 2, dim, device=x.device, dtype=torch.float32)
    if dw.numel() == 0 or dim == 0:
        dx.zero_()
        dw, db = dw.new_zeros(2, dim, 4), db.new_zeros(2, dim)
    else:
        w4f, w4b = wf.reshape(dim, K).contiguous(), wb.reshape(dim, K).contiguous()  # views for Vim's weights
        if K < 4:  # shorter kernels: zero taps in front
            w4f, w4b = F.pad(w4f, (4 - K, 0)), F.pad(w4b, (4 - K, 0))
        launch(
            _conv_silu_bidir_bwd, (batch, n_l, triton.cdiv(dim, block_d)), x.device,
            x, w4f, bf.contiguous(), w4b, bb.contiguous(), gf, gb, dx, dw, db, length, dim,
            x.stride(0), x.stride(1), gf.stride(0), gf.stride(1), dx.stride(0), dx.stride(1),
            SPAN=span, BLOCK_L=block_l, BLOCK_D=block_d, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        )
        dw, db = dw.sum(0), db.sum(0)  # [2, dim, 4], [2, dim]: one reduction for both directions
    dw = dw[:, :, 4 - K:].to(wf.dtype)
    db = db.to(bf.dtype)
    return dx, dw[0].reshape(wf.shape), db[0], dw[1].reshape(wb.shape), db[1]



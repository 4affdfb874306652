"""Triton kernels of the depthwise causal conv1d + SiLU (:mod:`rmeeto.ops.conv` holds the contract, the
PyTorch reference and the dispatch). One forward kernel and, for kernels of up to 4 taps (Vim's), one backward
kernel serve both the single-direction op and the two directions of Vim's mixer in one launch: constexpr flags
``FWD`` / ``BWD`` pick the causal and / or anti-causal direction, and each direction's arithmetic is written once
(:func:`_conv_fwd_tile`, :func:`_conv_bwd_span`). The backward walks a span of tokens row by row, so every row of
x and of the output gradient is loaded once and every SiLU derivative computed once; dx is written directly, the
weight and bias gradients as per-program partial sums that one ``sum`` reduces (deterministic, no atomics).
PyTorch's depthwise conv backward took ~20 ms of a merged Vim-S training step on an H200.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rmeeto.ops.triton._inductor import library_op
from rmeeto.ops.triton._launch import cdiv, launch, pdl_meta
from rmeeto.ops.triton._pdl import follow_previous

Tensor = torch.Tensor

__all__ = ["conv_silu_triton", "conv_silu_bidir_triton", "is_available", "FWD_CONFIG", "BWD_CONFIG",
           "BIDIR_BWD_CONFIG", "CANDIDATE_BWD"]


try:  # optional: Triton is only needed for the fused CUDA kernel
    import triton
    import triton.language as tl

    @triton.jit
    def _in_x_dtype(v, x_ptr):
        """A weight value as the conv computes with it: rounded to x's dtype, as float32 (a no-op for weights
        already in x's dtype; autocast's cast, without its cast kernels, for float32 weights with 16-bit x)."""
        return v.to(x_ptr.dtype.element_ty).to(tl.float32)

    @triton.jit
    def _conv_fwd_tile(x_base, w_ptr, b_ptr, out_base, rows, t, offs_d, mask_d, mrow, L, stride_xl, stride_ol,
                       K: tl.constexpr, REVERSE: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
        """out[l] = silu(b + sum_k w[k] x[l - K + 1 + k]) (REVERSE: x[l + K - 1 - k]) for the rows ``rows`` (each
        at position ``t`` of its sequence; ``mrow``: those that exist) and channels offs_d: row r of x at
        ``x_base + r * stride_xl``, of out at ``out_base + r * stride_ol``, so a tile's rows may belong to several
        sequences as long as those lie one row stride apart (each row's taps stop at its own sequence's ends).
        Weights are [D, K]. (The order of the address arithmetic matters: it steers which multiply-adds the
        compiler fuses, and so the bits of u; this one matches the session-5 kernels, tests/ops/test_gpu_conv.py.)"""
        acc = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
        acc += _in_x_dtype(tl.load(b_ptr + offs_d, mask=mask_d, other=0.0), x_base)[None, :]
        for k in tl.static_range(K):
            wk = _in_x_dtype(tl.load(w_ptr + offs_d * K + k, mask=mask_d, other=0.0), x_base)
            if REVERSE:
                shift = K - 1 - k
                m = (t + shift < L) & mrow
            else:
                shift = -(K - 1) + k
                m = (t + shift >= 0) & mrow
            xv = tl.load(x_base + (rows + shift)[:, None] * stride_xl + offs_d[None, :],
                         mask=m[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
            acc += xv * wk[None, :]
        out = acc * tl.sigmoid(acc)
        tl.store(out_base + rows[:, None] * stride_ol + offs_d[None, :], out.to(out_base.dtype.element_ty),
                 mask=mrow[:, None] & mask_d[None, :])

    @triton.jit
    def _conv_silu_fwd(
        x_ptr, wf_ptr, bf_ptr, wb_ptr, bb_ptr, outf_ptr, outb_ptr,
        L, D,
        stride_xb, stride_xl,
        stride_ob, stride_ol, M,
        K: tl.constexpr, FWD: tl.constexpr, BWD: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
        PDL: tl.constexpr = False, FLAT: tl.constexpr = False,
    ):
        """outf = silu(causal conv of x with wf, bf) when FWD, outb = silu(anti-causal conv with wb, bb) when
        BWD (both: the two directions of Vim's mixer in one launch, x read once from memory); x [batch, L, D]
        (unit channel stride), outf / outb [batch, L, D] (strides stride_ob, stride_ol, 1), weights [D, K].
        Grid (batch, token tiles, channel tiles); ``FLAT`` (the launcher's promise that x's and the outputs'
        sequences lie one row stride apart): grid (tiles of the M = batch x L rows, channel tiles), so no tile is
        part-empty at the end of a sequence (at Vim's 197 tokens, 32-row tiles hold 224)."""
        follow_previous(PDL)  # under PDL: wait for the previous kernel, then release the next
        if FLAT:
            rows = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
            offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
            mrow = rows < M
            t = rows % L
            x_base = x_ptr
            of_base = outf_ptr
            ob_base = outb_ptr
        else:
            pid_b = tl.program_id(0)
            rows = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
            offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
            mrow = rows < L
            t = rows
            x_base = x_ptr + pid_b * stride_xb
            of_base = outf_ptr + pid_b * stride_ob
            ob_base = outb_ptr + pid_b * stride_ob
        mask_d = offs_d < D
        if FWD:
            _conv_fwd_tile(x_base, wf_ptr, bf_ptr, of_base, rows, t, offs_d, mask_d, mrow, L, stride_xl, stride_ol,
                           K, False, BLOCK_L, BLOCK_D)
        if BWD:
            _conv_fwd_tile(x_base, wb_ptr, bb_ptr, ob_base, rows, t, offs_d, mask_d, mrow, L, stride_xl, stride_ol,
                           K, True, BLOCK_L, BLOCK_D)

    @triton.jit
    def _row(base, t, offs_d, mask_d, L, stride_l):
        """Row t of a [length, channels] tensor (channels offs_d), zero outside [0, L); as stored (no cast)."""
        ok = (t >= 0) & (t < L)
        return tl.load(base + t * stride_l + offs_d, mask=ok & mask_d, other=0.0)

    @triton.jit
    def _rows4(base, t, offs_d, mask_d, L, stride_l):
        """Rows t .. t + 3 (see :func:`_row`)."""
        return (_row(base, t, offs_d, mask_d, L, stride_l), _row(base, t + 1, offs_d, mask_d, L, stride_l),
                _row(base, t + 2, offs_d, mask_d, L, stride_l), _row(base, t + 3, offs_d, mask_d, L, stride_l))

    @triton.jit
    def _silu_grad(a, g):
        sig = tl.sigmoid(a)
        return g * sig * (1.0 + a * (1.0 - sig))

    @triton.jit
    def _conv_bwd_span(x_base, gf_base, gb_base, dx_base, s0, L, stride_xl, stride_gl, stride_dxl, offs_d, mask_d,
                       wf0, wf1, wf2, wf3, bias_f, wb0, wb1, wb2, wb3, bias_b,
                       FWD: tl.constexpr, BWD: tl.constexpr, SPAN: tl.constexpr, BLOCK_D: tl.constexpr):
        """Backward of u = silu(conv(x)) (4 taps) over the tokens [s0, s0 + SPAN) of one sequence, for the causal
        direction (FWD: weights wf*, bias_f, output gradient at gf_base) and / or the anti-causal one (BWD).

        With ga_f[t] = gf[t] silu'(a_f[t]), a_f[t] = bias_f + sum_k wf_k x[t - 3 + k], and ga_b[t] likewise
        with a_b[t] = bias_b + sum_k wb_k x[t + 3 - k]:
            dx[r] = sum_k wf_k ga_f[r + 3 - k] + sum_k wb_k ga_b[r - 3 + k],
            dwf_k = sum_t ga_f[t] x[t - 3 + k],  dwb_k = sum_t ga_b[t] x[t + 3 - k],  db = sum_t ga[t].
        The span is walked in memory order, one token row t (BLOCK_D channels) per step: each row of x and of
        the output gradients is loaded once, each ga computed once (the last three x rows and ga values stay
        in registers), and the weight / bias sums are per-channel sums in registers (no reduction across
        threads, so no shuffles, shared memory or barriers). Step t computes ga_f[t] and ga_b[t - 3] and
        emits dx[t - 3]; rows are loaded one chunk of four steps ahead. Each dx element is the same
        expression, in the same order, as in the session-5 kernel that recomputed ga for every shifted row
        (benchmarks/conv_v5.py); on an H200 (Triton 3.6) it still differed from that kernel's dx in the last
        bit here and there (other multiply-add contractions), with the same error against the fp32 reference;
        dw / db are summed in another order.
        Returns (dbf, dwf0..3, dbb, dwb0..3) as [BLOCK_D] float32 (zeros for a direction not computed)."""
        zero = tl.zeros([BLOCK_D], tl.float32)
        dbf, dwf0, dwf1, dwf2, dwf3 = zero, zero, zero, zero, zero
        dbb, dwb0, dwb1, dwb2, dwb3 = zero, zero, zero, zero, zero
        fa1, fa2, fa3 = zero, zero, zero  # ga_f[t - 1], ga_f[t - 2], ga_f[t - 3]
        ba1, ba2, ba3 = zero, zero, zero  # ga_b[t - 4], ga_b[t - 5], ga_b[t - 6]
        # rows past the last step's are not loaded (zeros, never used): hi bounds every row load
        hi = tl.minimum(L, s0 + SPAN + 3)
        x1 = _row(x_base, s0 - 1, offs_d, mask_d, hi, stride_xl).to(tl.float32)  # x[t - 1], x[t - 2], x[t - 3]
        x2 = _row(x_base, s0 - 2, offs_d, mask_d, hi, stride_xl).to(tl.float32)
        x3 = _row(x_base, s0 - 3, offs_d, mask_d, hi, stride_xl).to(tl.float32)
        # rows of the first four steps: x[t], gf[t], gb[t - 3]
        na, nb, nc, nd = _rows4(x_base, s0, offs_d, mask_d, hi, stride_xl)
        if FWD:
            fga, fgb, fgc, fgd = _rows4(gf_base, s0, offs_d, mask_d, hi, stride_gl)
        if BWD:
            bga, bgb, bgc, bgd = _rows4(gb_base, s0 - 3, offs_d, mask_d, hi, stride_gl)
        # steps t = s0 + c .. s0 + c + 3; none past the sequence's end (the last span may be short)
        for c in range(0, tl.minimum(SPAN, L - s0) + 3, 4):
            xa, xb, xc, xd = na, nb, nc, nd
            if FWD:
                fa, fb, fc, fd = fga, fgb, fgc, fgd
            if BWD:
                ba, bb, bc, bd = bga, bgb, bgc, bgd
            # the next four steps' loads go out before this chunk's work and stores
            t4 = s0 + c + 4
            na, nb, nc, nd = _rows4(x_base, t4, offs_d, mask_d, hi, stride_xl)
            if FWD:
                fga, fgb, fgc, fgd = _rows4(gf_base, t4, offs_d, mask_d, hi, stride_gl)
            if BWD:
                bga, bgb, bgc, bgd = _rows4(gb_base, t4 - 3, offs_d, mask_d, hi, stride_gl)
            for j in tl.static_range(4):
                # step index i = c + j; t = s0 + i (a step past SPAN + 2 changes nothing)
                if j == 0:
                    x0 = xa.to(tl.float32)
                    if FWD:
                        gf = fa.to(tl.float32)
                    if BWD:
                        gb = ba.to(tl.float32)
                elif j == 1:
                    x0 = xb.to(tl.float32)
                    if FWD:
                        gf = fb.to(tl.float32)
                    if BWD:
                        gb = bb.to(tl.float32)
                elif j == 2:
                    x0 = xc.to(tl.float32)
                    if FWD:
                        gf = fc.to(tl.float32)
                    if BWD:
                        gb = bc.to(tl.float32)
                else:
                    x0 = xd.to(tl.float32)
                    if FWD:
                        gf = fd.to(tl.float32)
                    if BWD:
                        gb = bd.to(tl.float32)
                if FWD:
                    fa0 = _silu_grad(bias_f + wf0 * x3 + wf1 * x2 + wf2 * x1 + wf3 * x0, gf)  # ga_f[t]
                    own = tl.where(c + j < SPAN, fa0, 0.0)  # t in this program's span
                    dbf += own
                    dwf0 += own * x3
                    dwf1 += own * x2
                    dwf2 += own * x1
                    dwf3 += own * x0
                if BWD:
                    ba0 = _silu_grad(bias_b + wb0 * x0 + wb1 * x1 + wb2 * x2 + wb3 * x3, gb)  # ga_b[t - 3]
                    own = tl.where((c + j >= 3) & (c + j < SPAN + 3), ba0, 0.0)  # t - 3 in the span
                    dbb += own
                    dwb0 += own * x0
                    dwb1 += own * x1
                    dwb2 += own * x2
                    dwb3 += own * x3
                if True:  # dx[t - 3], a row of this span when 3 <= c + j < SPAN + 3
                    if FWD:
                        dx_f = wf3 * fa3
                        dx_f += wf2 * fa2
                        dx_f += wf1 * fa1
                        dx_f += wf0 * fa0
                    if BWD:
                        dx_b = wb3 * ba0
                        dx_b += wb2 * ba1
                        dx_b += wb1 * ba2
                        dx_b += wb0 * ba3
                    if FWD and BWD:
                        # each direction rounded to dx's dtype before the add, as two single-direction
                        # kernels followed by autograd's add round (a no-op for float32)
                        dx = (dx_f.to(dx_base.dtype.element_ty).to(tl.float32)
                              + dx_b.to(dx_base.dtype.element_ty).to(tl.float32))
                    elif FWD:
                        dx = dx_f
                    else:
                        dx = dx_b
                    r = s0 + c + j - 3
                    tl.store(dx_base + r * stride_dxl + offs_d, dx.to(dx_base.dtype.element_ty),
                             mask=(r >= s0) & (r < s0 + SPAN) & (r < L) & mask_d)
                x3, x2, x1 = x2, x1, x0
                if FWD:
                    fa3, fa2, fa1 = fa2, fa1, fa0
                if BWD:
                    ba3, ba2, ba1 = ba2, ba1, ba0
        return dbf, dwf0, dwf1, dwf2, dwf3, dbb, dwb0, dwb1, dwb2, dwb3

    @triton.jit
    def _load_w(w_ptr, offs_d, k: tl.constexpr, mask_d, x_ptr):
        return _in_x_dtype(tl.load(w_ptr + offs_d * 4 + k, mask=mask_d, other=0.0), x_ptr)

    @triton.jit
    def _store_sums(dw_ptr, db_ptr, slot, D, offs_d, mask_d, db, dw0, dw1, dw2, dw3):
        """One direction's partial sums: db to db_ptr[slot, D], dw to dw_ptr[slot, D, 4]."""
        tl.store(db_ptr + slot * D + offs_d, db, mask=mask_d)
        dw = dw_ptr + (slot * D + offs_d) * 4
        tl.store(dw + 0, dw0, mask=mask_d)
        tl.store(dw + 1, dw1, mask=mask_d)
        tl.store(dw + 2, dw2, mask=mask_d)
        tl.store(dw + 3, dw3, mask=mask_d)

    @triton.jit
    def _conv_silu_bwd(
        x_ptr, wf_ptr, bf_ptr, wb_ptr, bb_ptr, gf_ptr, gb_ptr, dx_ptr, dw_ptr, db_ptr,
        B, L, D,
        stride_xb, stride_xl, stride_gb, stride_gl, stride_dxb, stride_dxl,
        FWD: tl.constexpr, BWD: tl.constexpr, SPAN: tl.constexpr, SEQS: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """Backward of :func:`_conv_silu_fwd` for 4-tap weights [D, 4] (shorter ones zero-padded in front): gf /
        gb are the gradients of outf / outb (same strides), dx = dx_f + dx_b (the directions computed). A
        program walks (:func:`_conv_bwd_span`) the same SPAN tokens of BLOCK_D channels in SEQS consecutive
        sequences of the batch (B of them) and writes its weight / bias partial sums, over those, to
        dw[program, dir, D, 4] / db[program, dir, D] (program = group * n_spans + span; float32; dir 0: the
        first direction computed), summed by the caller (deterministic, no atomics). More sequences per
        program: fewer partial sums to write and reduce, fewer programs to hide memory latency with."""
        pid_g = tl.program_id(0)
        pid_l = tl.program_id(1)
        tile = pid_g * tl.num_programs(1) + pid_l
        offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        bias_f = _in_x_dtype(tl.load(bf_ptr + offs_d, mask=mask_d, other=0.0), x_ptr)
        bias_b = _in_x_dtype(tl.load(bb_ptr + offs_d, mask=mask_d, other=0.0), x_ptr)
        wf0, wf1 = _load_w(wf_ptr, offs_d, 0, mask_d, x_ptr), _load_w(wf_ptr, offs_d, 1, mask_d, x_ptr)
        wf2, wf3 = _load_w(wf_ptr, offs_d, 2, mask_d, x_ptr), _load_w(wf_ptr, offs_d, 3, mask_d, x_ptr)
        wb0, wb1 = _load_w(wb_ptr, offs_d, 0, mask_d, x_ptr), _load_w(wb_ptr, offs_d, 1, mask_d, x_ptr)
        wb2, wb3 = _load_w(wb_ptr, offs_d, 2, mask_d, x_ptr), _load_w(wb_ptr, offs_d, 3, mask_d, x_ptr)
        zero = tl.zeros([BLOCK_D], tl.float32)
        dbf, dwf0, dwf1, dwf2, dwf3 = zero, zero, zero, zero, zero
        dbb, dwb0, dwb1, dwb2, dwb3 = zero, zero, zero, zero, zero
        for i in range(SEQS):
            b = pid_g * SEQS + i
            Lb = tl.where(b < B, L, 0)  # a sequence past the batch's end: no rows, nothing stored
            sf, sf0, sf1, sf2, sf3, sb, sb0, sb1, sb2, sb3 = _conv_bwd_span(
                x_ptr + b * stride_xb, gf_ptr + b * stride_gb, gb_ptr + b * stride_gb, dx_ptr + b * stride_dxb,
                pid_l * SPAN, Lb, stride_xl, stride_gl, stride_dxl, offs_d, mask_d,
                wf0, wf1, wf2, wf3, bias_f, wb0, wb1, wb2, wb3, bias_b, FWD, BWD, SPAN, BLOCK_D)
            dbf, dwf0, dwf1, dwf2, dwf3 = dbf + sf, dwf0 + sf0, dwf1 + sf1, dwf2 + sf2, dwf3 + sf3
            dbb, dwb0, dwb1, dwb2, dwb3 = dbb + sb, dwb0 + sb0, dwb1 + sb1, dwb2 + sb2, dwb3 + sb3
        if FWD and BWD:
            _store_sums(dw_ptr, db_ptr, tile * 2, D, offs_d, mask_d, dbf, dwf0, dwf1, dwf2, dwf3)
            _store_sums(dw_ptr, db_ptr, tile * 2 + 1, D, offs_d, mask_d, dbb, dwb0, dwb1, dwb2, dwb3)
        elif FWD:
            _store_sums(dw_ptr, db_ptr, tile, D, offs_d, mask_d, dbf, dwf0, dwf1, dwf2, dwf3)
        else:
            _store_sums(dw_ptr, db_ptr, tile, D, offs_d, mask_d, dbb, dwb0, dwb1, dwb2, dwb3)

    _HAS_TRITON = True
except Exception:  # pragma: no cover - depends on the install
    _HAS_TRITON = False


# Tiles of the forward kernel (single and both directions).
FWD_CONFIG = {"BLOCK_L": 32, "BLOCK_D": 128, "num_warps": 4}
# Tiles over the flat rows (batch x tokens) where the layout allows, not per sequence. Thirty-eighth session (H200,
# benchmarks/conv_tiles_gpu.py, both directions, fp16, batch 128, graphed us per call, the same bits): at Vim-S's
# width 53.9 against 60.7 at 197 tokens (where 32-row tiles per sequence hold 224 rows) and 956 against 1,065 over
# the merged schedule's 24 calls; at Vim-Ti's width 29.6 against 33.3 and 611 against 654. Other tile sizes, per
# sequence or flat, were slower over both schedules (16-row tiles per sequence came closest: 1,016 / 634).
FWD_FLAT = True
# Tiles of the backward kernel: a program walks SPAN tokens of BLOCK_D channels in SEQS sequences; BWD_CONFIG for
# one direction, BIDIR_BWD_CONFIG for both (twice the state per channel). benchmarks/bench_conv_gpu.py times the
# candidates, benchmarks/compile_conv.py shows their registers and instruction counts: on sm_90 (bf16) 4 channels
# per thread take 130 registers for one direction and 255 for both (no spill, but few warps per SM), 2 channels
# per thread 72 / 128. Not yet timed on a GPU.
# Measured on an H200 (sixth session, benchmarks/bench_conv_gpu.py, Vim-S shapes, bf16): one direction 0.102 ms
# (session-5 kernel 0.345), both directions 0.152 ms (session 5: 0.712); the other candidates 0.13-0.19 ms.
BWD_CONFIG = {"SPAN": 64, "SEQS": 1, "BLOCK_D": 128, "num_warps": 1, "num_stages": 1}
BIDIR_BWD_CONFIG = {"SPAN": 16, "SEQS": 1, "BLOCK_D": 128, "num_warps": 1, "num_stages": 1}
CANDIDATE_BWD = [  # channels per thread = BLOCK_D / (32 num_warps)
    {"SPAN": 32, "SEQS": 1, "BLOCK_D": 128, "num_warps": 1, "num_stages": 1},
    {"SPAN": 32, "SEQS": 1, "BLOCK_D": 64, "num_warps": 1, "num_stages": 1},
    {"SPAN": 16, "SEQS": 1, "BLOCK_D": 128, "num_warps": 1, "num_stages": 1},
    {"SPAN": 64, "SEQS": 1, "BLOCK_D": 128, "num_warps": 1, "num_stages": 1},
    {"SPAN": 64, "SEQS": 1, "BLOCK_D": 64, "num_warps": 1, "num_stages": 1},
    {"SPAN": 32, "SEQS": 1, "BLOCK_D": 256, "num_warps": 2, "num_stages": 1},
    {"SPAN": 32, "SEQS": 1, "BLOCK_D": 128, "num_warps": 2, "num_stages": 1},
    {"SPAN": 32, "SEQS": 2, "BLOCK_D": 128, "num_warps": 1, "num_stages": 1},  # half the partial sums
    {"SPAN": 64, "SEQS": 4, "BLOCK_D": 64, "num_warps": 1, "num_stages": 1},
]


def _dense(t: Tensor) -> Tensor:
    """t itself when contiguous (the kernels index weight [dim, 1, K] as [dim, K] and bias [dim] flat)."""
    return t if t.is_contiguous() else t.contiguous()


def _fwd_launch(x: Tensor, wf: Tensor, bf: Tensor, wb: Tensor, bb: Tensor, fwd: bool, bwd: bool):
    """(u_f or None, u_b or None), contiguous [batch, length, dim]: the causal conv+SiLU with (wf, bf) when
    ``fwd``, the anti-causal one with (wb, bb) when ``bwd``; x [batch, length, dim], weights [dim, 1, K]."""
    batch, length, dim = x.shape
    if x.stride(2) != 1:
        x = x.contiguous()
    out_f = torch.empty(batch, length, dim, device=x.device, dtype=x.dtype) if fwd else None
    out_b = torch.empty(batch, length, dim, device=x.device, dtype=x.dtype) if bwd else None
    if x.numel() == 0:
        return out_f, out_b
    if not fwd:
        wf, bf = wb, bb
    if not bwd:
        wb, bb = wf, bf
    of = out_f if fwd else out_b
    ob = out_b if bwd else out_f
    grid, tail, meta = fwd_spec(x, of, wf.shape[-1], fwd, bwd)
    launch(_conv_silu_fwd, grid, x.device, x, _dense(wf), _dense(bf), _dense(wb), _dense(bb), of, ob, *tail, **meta)
    return out_f, out_b


def fwd_spec(x: Tensor, out: Tensor, taps: int, fwd: bool = True, bwd: bool = True) -> tuple[tuple, tuple, dict]:
    """(grid, scalar arguments, constexprs and launch options) of the forward kernel over x [batch, length, dim]
    (unit channel stride) into outputs laid out as ``out`` (both directions' alike), ``taps`` = K: the kernel's
    tensors (x, wf, bf, wb, bb, out_f, out_b; weights and biases dense) come first. Tiles of flat rows
    (``FWD_FLAT``) where x's and out's sequences each lie one row stride apart (x a contiguous tensor, or the
    channel half of in_proj's output) and the row offsets fit int32, else tiles per sequence."""
    batch, length, dim = x.shape
    cfg = FWD_CONFIG
    block_l, block_d = cfg["BLOCK_L"], cfg["BLOCK_D"]
    rows = batch * length
    flat = (FWD_FLAT and (batch == 1 or (x.stride(0) == length * x.stride(1)
                                         and out.stride(0) == length * out.stride(1)))
            and (rows + taps) * max(x.stride(1), out.stride(1), 1) < 2 ** 31)  # row offsets in int32
    if flat:
        grid = (cdiv(rows, block_l), cdiv(dim, block_d))
    else:
        grid = (batch, cdiv(length, block_l), cdiv(dim, block_d))
    tail = (length, dim, x.stride(0), x.stride(1), out.stride(0), out.stride(1), rows)
    meta = dict(K=taps, FWD=fwd, BWD=bwd, BLOCK_L=block_l, BLOCK_D=block_d, num_warps=cfg["num_warps"],
                **pdl_meta())
    if flat:
        meta["FLAT"] = True
    return grid, tail, meta


def _conv_silu_triton_fwd(x: Tensor, weight: Tensor, bias: Tensor, reverse: bool) -> Tensor:
    """Forward launcher: x [batch, length, dim] (unit channel stride) -> u [batch, length, dim] contiguous."""
    reverse = bool(reverse)
    out_f, out_b = _fwd_launch(x, weight, bias, weight, bias, not reverse, reverse)
    return out_b if reverse else out_f


def is_available() -> bool:
    """True when Triton imports (the kernels then run on CUDA tensors, or on CPU under TRITON_INTERPRET=1)."""
    return _HAS_TRITON


def _bwd_launch(x: Tensor, w4f: Tensor, bf: Tensor, w4b: Tensor, bb: Tensor, gf: Tensor, gb: Tensor,
                fwd: bool, bwd: bool, cfg: dict):
    """(dx [batch, length, dim], dw [ndir, dim, 4], db [ndir, dim]) (float32 sums) of the directions asked
    for (``fwd``: causal with (w4f, bf) and output gradient gf; ``bwd``: anti-causal with (w4b, bb), gb), ndir of
    them in that order; 4-tap weights [dim, 4], x / gf / gb with unit channel stride, gf and gb of equal strides."""
    batch, length, dim = x.shape
    ndir = int(fwd) + int(bwd)
    span, seqs, block_d = cfg["SPAN"], cfg["SEQS"], cfg["BLOCK_D"]
    n_l, n_g = cdiv(length, span), cdiv(batch, seqs)
    dx = torch.empty(batch, length, dim, device=x.device, dtype=x.dtype)
    dw = torch.empty(n_g * n_l, ndir, dim, 4, device=x.device, dtype=torch.float32)
    db = torch.empty(n_g * n_l, ndir, dim, device=x.device, dtype=torch.float32)
    if dw.numel() == 0:
        return dx.zero_(), dw.new_zeros(ndir, dim, 4), db.new_zeros(ndir, dim)
    launch(
        _conv_silu_bwd, (n_g, n_l, cdiv(dim, block_d)), x.device,
        x, w4f, bf, w4b, bb, gf, gb, dx, dw, db, batch, length, dim,
        x.stride(0), x.stride(1), gf.stride(0), gf.stride(1), dx.stride(0), dx.stride(1),
        FWD=fwd, BWD=bwd, SPAN=span, SEQS=seqs, BLOCK_D=block_d, num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )
    return dx, dw.sum(0), db.sum(0)  # one reduction per kind for both directions


def _taps4(weight: Tensor) -> Tensor:
    """weight [dim, 1, K] (K <= 4) as [dim, 4], shorter kernels with zero taps in front (a view for K == 4)."""
    dim, K = weight.shape[0], weight.shape[-1]
    w = _dense(weight).reshape(dim, K)
    return w if K == 4 else F.pad(w, (4 - K, 0))


def _conv_silu_triton_bwd(x: Tensor, weight: Tensor, bias: Tensor, grad: Tensor, reverse: bool):
    """Backward launcher: (dx [batch, length, dim], dweight like weight, dbias like bias); kernels of up to 4
    taps on the fused kernel, longer ones (not used by Vim) in PyTorch."""
    K = weight.shape[-1]
    if K > 4:
        return _conv_silu_bwd_torch(x, weight, bias, grad, reverse)
    if x.stride(2) != 1:
        x = x.contiguous()
    if grad.stride(2) != 1:
        grad = grad.contiguous()
    reverse = bool(reverse)
    w4, b = _taps4(weight), _dense(bias)
    dx, dw, db = _bwd_launch(x, w4, b, w4, b, grad, grad, not reverse, reverse, BWD_CONFIG)
    dw = dw[0, :, 4 - K:]
    return dx, dw.reshape(weight.shape).to(weight.dtype), db[0].to(bias.dtype)


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
@library_op("conv_silu")
def _conv_silu_op(x: Tensor, weight: Tensor, bias: Tensor, reverse: bool) -> Tensor:
    return _conv_silu_triton_fwd(x, weight, bias, reverse)


@torch.library.register_fake(_conv_silu_op)
def _(x, weight, bias, reverse):
    return torch.empty(x.shape, device=x.device, dtype=x.dtype)


@library_op("conv_silu_bwd")
def _conv_silu_bwd_op(x: Tensor, weight: Tensor, bias: Tensor, grad: Tensor,
                      reverse: bool) -> tuple[Tensor, Tensor, Tensor]:
    return _conv_silu_triton_bwd(x, weight, bias, grad, reverse)


@torch.library.register_fake(_conv_silu_bwd_op)
def _(x, weight, bias, grad, reverse):
    return (torch.empty(x.shape, device=x.device, dtype=x.dtype), torch.empty_like(weight),
            torch.empty_like(bias))


def _setup_context(ctx, inputs, output):
    x, weight, bias, reverse = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.reverse = reverse


def _backward(ctx, grad):
    return _conv_silu_bwd_op(*ctx.saved_tensors, grad, ctx.reverse) + (None,)


torch.library.register_autograd(_conv_silu_op, _backward, setup_context=_setup_context)


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


# ------------------------------------------------------------------------------------ both directions
# Vim's mixer runs the causal conv (conv1d) and the anti-causal one (conv1d_b) over the same x. The kernels above
# serve both in one launch each way (FWD and BWD set): the forward reads x once for both, the backward walks x
# once for both and adds the two directions' dx in registers. Each direction runs the single-direction code with
# the direction a compile-time constant, so u and (up to the rounding of the add) dx equal the single-direction
# kernels' bit for bit.
def _conv_silu_bidir_triton_fwd(x: Tensor, wf: Tensor, bf: Tensor, wb: Tensor, bb: Tensor) -> tuple[Tensor, Tensor]:
    """(u_f, u_b), contiguous [batch, length, dim] each: causal with (wf, bf), anti-causal with (wb, bb).
    Two tensors rather than halves of one buffer: outputs that alias each other would keep the op from
    becoming a custom op (torch.compile) and cost zero-fills and copies in autograd's backward. Weights and
    biases of any float dtype are rounded to x's dtype as they are loaded (autocast's cast, without its four
    cast kernels per call)."""
    return _fwd_launch(x, wf, bf, wb, bb, True, True)


def _conv_silu_bidir_triton_bwd(x: Tensor, wf: Tensor, bf: Tensor, wb: Tensor, bb: Tensor, gf: Tensor, gb: Tensor):
    """(dx, dwf, dbf, dwb, dbb) of (u_f, u_b) = _conv_silu_bidir_triton_fwd(...) for their grads gf, gb."""
    K = wf.shape[-1]
    if x.stride(2) != 1:
        x = x.contiguous()
    if gf.stride(2) != 1 or gb.stride() != gf.stride():
        gf, gb = gf.contiguous(), gb.contiguous()
    dx, dw, db = _bwd_launch(x, _taps4(wf), _dense(bf), _taps4(wb), _dense(bb), gf, gb, True, True,
                             BIDIR_BWD_CONFIG)
    dw = dw[:, :, 4 - K:].to(wf.dtype)
    db = db.to(bf.dtype)
    return dx, dw[0].reshape(wf.shape), db[0], dw[1].reshape(wb.shape), db[1]


class _ConvSiluBidirTriton(torch.autograd.Function):
    """(u_f, u_b) = _conv_silu_bidir_triton_fwd(...); a gradient that is None (a direction not used) counts
    as zeros."""

    @staticmethod
    def forward(ctx, x, wf, bf, wb, bb):
        ctx.save_for_backward(x, wf, bf, wb, bb)
        return _conv_silu_bidir_triton_fwd(x, wf, bf, wb, bb)

    @staticmethod
    def backward(ctx, gf, gb):
        x, wf, bf, wb, bb = ctx.saved_tensors
        if gf is None and gb is None:
            return None, None, None, None, None
        gf = torch.zeros_like(gb) if gf is None else gf
        gb = torch.zeros_like(gf) if gb is None else gb
        return _conv_silu_bidir_triton_bwd(x, wf, bf, wb, bb, gf, gb)


def conv_silu_bidir_triton(x: Tensor, weight: Tensor, bias: Tensor, weight_b: Tensor, bias_b: Tensor):
    """(u_f, u_b) = (conv_silu(x, weight, bias), conv_silu(x, weight_b, bias_b, reverse=True)) in one launch
    each way, for 4-tap (or shorter) kernels; shapes as :func:`rmeeto.ops.conv.conv_silu_bidir`."""
    if weight.shape[-1] > 4:
        raise ValueError(f"conv_silu_bidir_triton supports kernels of up to 4 taps, got {weight.shape[-1]}")
    # weights of another dtype than x (autocast) are rounded to x's dtype inside the kernels; their gradients
    # come back in float32 sums cast to the weights' dtype (not rounded to x's dtype first, as the
    # single-direction path's cast would)
    if torch.compiler.is_compiling():  # two opaque custom ops for the tracer; eager takes the one-launch path
        return conv_silu_triton(x, weight, bias, False), conv_silu_triton(x, weight_b, bias_b, True)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, weight, bias, weight_b, bias_b)):
        return _ConvSiluBidirTriton.apply(x, weight, bias, weight_b, bias_b)
    return _conv_silu_bidir_triton_fwd(x, weight, bias, weight_b, bias_b)

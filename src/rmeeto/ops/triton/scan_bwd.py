"""Selective-scan backward with the dB / dC channel sums done as a reduce-scatter across the warp's lanes.

:func:`bwd` and :func:`bwd_bidir` are the Triton scan's backward: :func:`rmeeto.ops.triton.scan._bwd` and
``scan._bwd_bidir``, the one entry of the custom ops and autograd functions, call them (this module registers
them there when imported; it builds on scan.py's jit helpers, so scan.py cannot import it). The math and the two
passes are described in :mod:`rmeeto.ops.triton.scan`'s docstring; what is particular to this module is the
per-token sums over channels, the row-wise accesses below, and options (register cap, prefetch) in the tile
config.

Why. Per token the backward needs 2 * dstate sums over the channels (dB_t[n] = sum_d g[n, d] dt u[d] and
dC_t[n] = sum_d dy[d] h[n, d]). Each thread holds one channel, so ``tl.sum(.., axis=1)`` reduces each of the
2 * dstate values with its own 5-level butterfly: for dstate 16, 32 values x 5 levels = 160 shuffles + 160 adds
per token, more instructions than the scan's own math (and shuffles issue at a quarter of the FMA rate).

How. The 32 values of a lane are reduced together, halving them at every level: at distance M (16, 8, 4, 2, 1)
a lane keeps half of its values, sends the other half to lane ^ M and adds what it receives (which half a
lane keeps depends on its bit M). 16 + 8 + 4 + 2 + 1 = 31 shuffles per token for dstate 16 (plus two selects
per shuffle), after which lane l holds one fully reduced value and the 32 lanes store dB_t and dC_t with
one coalesced store. Which value ends in which lane:

    level 16: dB (bit clear) or dC (bit set)        level 8: even (clear) or odd (set) dstate entry
    levels 4, 2, 1: the upper or lower half of the remaining rows of the [NP/2, BLOCK_D] half-state tile

so lane l holds entry n = 2 * (4 b4 + 2 b2 + b1) + b8 of dB (b16 = 0) or dC (b16 = 1) for dstate 16 (bK = bit
K of l). For smaller dstate (NP/2 < 8 rows) the levels with one row left do a plain butterfly instead (the
value then sits on several lanes; only the lane with those bits clear stores it); for dstate 32 two rows are
left and stored.

The lane exchange is ``tl.gather`` along the channel axis with index ``offs ^ M``: with one channel per lane
Triton lowers a gather within a warp to one ``shfl.sync.idx`` per register (no shared memory), and the
interpreter runs it too, so the CPU tests check the whole reduce-scatter (not only the GPU). This needs every
warp to hold 32 consecutive channels, one per lane: BLOCK_D == 32 * num_warps (checked by the launcher).
Each warp then writes its own dB / dC partial (n_dblocks * BLOCK_D / 32 partials, summed afterwards), so no
sum crosses warps. ``XLANE=False`` sums each value with its own ``tl.sum`` instead (the reductions the
reduce-scatter replaced), for comparison: the same body, one partial per channel block.

Layouts on Triton 3.6 (the GPU machine's): a 2-D load or store whose strides are all unknown (the
[CHUNK, BLOCK_D] u / delta / dout / z tiles, A [NP/2, BLOCK_D], dA) has every axis equally contiguous, and
3.6's coalescing pass then puts the first axis (chunk, dstate) across lanes; the state tiles inherit that
layout and every per-channel sum becomes shuffles and shared-memory round trips (the backward this module
replaced, with 2-D tile accesses and tl.sum reductions, compiled to 260 shuffles, 1 KB of shared memory and 14
barriers on 3.6, 320 / 0 / 9 on 3.8). Here those accesses go one [BLOCK_D] row (one channel per lane) at a time
(_load_rows, _store_rows, _channel_consts_rows), which both versions compile alike: 62 shuffles, no shared memory,
no spills.

The body is :func:`_scan_bwd_body`, a ``@triton.jit`` function over base pointers (already at the program's
batch element / direction) and strides, called by the single-direction kernel and by the two-direction one
(both directions of a Vim mixer in one launch), which walks the backward direction with REVERSE=False from bases
at token L-1 and negated token strides.
"""

from __future__ import annotations

import torch

from rmeeto.ops.triton import scan as _scan
from rmeeto.ops.triton._launch import launch

Tensor = torch.Tensor

__all__ = ["BWD_XLANE_CONFIG", "CANDIDATE_BWD_XLANE", "bwd", "bwd_bidir"]

# One channel per lane (BLOCK_D = 32 * num_warps) is required by the lane exchange; CHUNK tokens per step.
# Optional keys: maxnreg caps the registers per thread so more warps fit on an SM (65536 registers per SM):
# the kernel takes 254 at CHUNK=2 (8 warps per SM) and fits 224 (9 warps); at CHUNK=1 it takes ~245 and fits
# 200 (10 warps), or, with reuse_bc=False (B and C reloaded for the adjoint step: ~100 more instructions per
# token), ~217 and 168 (12 warps). prefetch=True loads the next chunk's inputs (and checkpoint) one step
# ahead (see _scan_bwd_body). No spills with Triton 3.6 except 4 bytes in the two-direction kernel at CHUNK=1
# / maxnreg 200 (3.8: the same at CHUNK=2 / 224). benchmarks/compile_scan.py --xbwd / --maxnreg shows the
# counts, benchmarks/bench_scan_bwd_gpu.py times every candidate, tests/ops/test_scan_bwd.py checks every one.
# Measured on an H200 (sixth session, benchmarks/bench_scan_bwd_gpu.py, Vim-S, L 197, bf16): both directions
# 2.571 ms with prefetch, 3.265 without, 4.275 at CHUNK=1 / maxnreg 200; the tl.sum kernel this replaced: 3.666.
BWD_XLANE_CONFIG = {"BLOCK_D": 32, "CHUNK": 2, "num_warps": 1, "prefetch": True}
CANDIDATE_BWD_XLANE = [
    {"BLOCK_D": 32, "CHUNK": 2, "num_warps": 1},
    {"BLOCK_D": 32, "CHUNK": 2, "num_warps": 1, "prefetch": True},
    {"BLOCK_D": 32, "CHUNK": 2, "num_warps": 1, "maxnreg": 224},
    {"BLOCK_D": 32, "CHUNK": 1, "num_warps": 1, "maxnreg": 200},
    {"BLOCK_D": 32, "CHUNK": 1, "num_warps": 1, "maxnreg": 200, "prefetch": True},
    {"BLOCK_D": 32, "CHUNK": 1, "num_warps": 1, "maxnreg": 168, "reuse_bc": False},
]

# The reduce-scatter (True) or the original per-value tl.sum reductions (False); tests and benchmarks flip it.
XLANE = True

if _scan._HAS_TRITON:
    import triton
    import triton.language as tl

    from rmeeto.ops.triton.scan import (
        _BIDIR_NOSPEC, _SCAN_NOSPEC, _advance, _chunk_pos, _dot_state, _load_pair, _pick,
        _pick3, _put, _sigmoid, _step_dt,
    )

    @triton.jit
    def _dir_base(ptr, pid_b, s_b, s_l, t0, sgn):
        """(base, token stride) of one batch element's [dim, L] plane for processing order: forwards
        (t0 = 0, sgn = 1) or from the last token (t0 = L - 1, sgn = -1)."""
        return ptr + pid_b * s_b + t0 * s_l, sgn * s_l

    @triton.jit
    def _load_rows(base, c, L, offs_d, s_l, s_d, mask_d, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
                   REVERSE: tl.constexpr):
        """[CHUNK, BLOCK_D] float32 tile of chunk c (zeros past the sequence / channels), loaded one token row
        ([BLOCK_D], one channel per lane) at a time. A 2-D tile load would leave the tile's layout to
        Triton's coalescing pass, which on Triton 3.6 (strides unknown, every axis equally contiguous) spreads
        the CHUNK axis over lanes and then pays shuffles and shared memory to bring it back in-thread."""
        offs_j = tl.arange(0, CHUNK)
        tile = tl.zeros([CHUNK, BLOCK_D], dtype=tl.float32)
        for j in tl.static_range(CHUNK):
            tj, vj = _chunk_pos(c, j, L, CHUNK, REVERSE)
            row = tl.load(base + tj * s_l + offs_d * s_d, mask=mask_d & vj, other=0.0).to(tl.float32)
            tile = _put(tile, offs_j, j, row)
        return tile

    @triton.jit
    def _store_rows(base, c, L, offs_d, s_l, s_d, x, mask_d, CHUNK: tl.constexpr, REVERSE: tl.constexpr):
        """Store the [CHUNK, BLOCK_D] tile x of chunk c one token row at a time (see _load_rows)."""
        offs_j = tl.arange(0, CHUNK)
        for j in tl.static_range(CHUNK):
            tj, vj = _chunk_pos(c, j, L, CHUNK, REVERSE)
            tl.store(base + tj * s_l + offs_d * s_d, _pick(x, offs_j, j).to(base.dtype.element_ty), mask=mask_d & vj)

    @triton.jit
    def _channel_consts_rows(A_ptr, D_ptr, bias_ptr, offs_d, s_A_n, s_A_d, dstate, mask_d, HAS_D: tl.constexpr,
                             HAS_BIAS: tl.constexpr, A_IS_LOG: tl.constexpr, BLOCK_D: tl.constexpr,
                             NP: tl.constexpr):
        """A log2 e as even / odd halves [NP/2, BLOCK_D] (A = -exp(A_log) formed first with A_IS_LOG), D and
        delta_bias ([BLOCK_D], zeros when absent) of channels offs_d, with A read one dstate entry ([BLOCK_D] row)
        at a time, for the layout reason of _load_rows: a 2-D load's strides are unknown on both axes, and
        Triton 3.6 then lays the tile out with dstate across lanes, a layout every state tile of the kernel
        inherits. (scan._channel_consts_rows is the forward's, on [1, BLOCK_D] rows.)"""
        offs_h = tl.arange(0, NP // 2)
        ae = tl.zeros([NP // 2, BLOCK_D], dtype=tl.float32)
        ao = tl.zeros([NP // 2, BLOCK_D], dtype=tl.float32)
        for k in tl.static_range(NP // 2):
            p = A_ptr + offs_d * s_A_d + (2 * k) * s_A_n
            ae = _put(ae, offs_h, k, tl.load(p, mask=mask_d & (2 * k < dstate), other=0.0).to(tl.float32))
            ao = _put(ao, offs_h, k, tl.load(p + s_A_n, mask=mask_d & (2 * k + 1 < dstate), other=0.0).to(tl.float32))
        if A_IS_LOG:
            ae = -tl.exp(ae)
            ao = -tl.exp(ao)
        if HAS_D:
            Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        else:
            Dv = tl.zeros([BLOCK_D], dtype=tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        else:
            bias = tl.zeros([BLOCK_D], dtype=tl.float32)
        return ae * 1.4426950408889634, ao * 1.4426950408889634, Dv, bias

    @triton.jit
    def _exchange(x, src):
        """x [R, BLOCK_D] -> x[:, src] (src [BLOCK_D]: a channel of the same warp for every channel): a
        register exchange between lanes (one shuffle per row on the GPU)."""
        return tl.gather(x, tl.broadcast_to(src[None, :], x.shape), axis=1)

    @triton.jit
    def _halve(lo, hi, lane, M: tl.constexpr, BLOCK_D: tl.constexpr):
        """One reduce-scatter level at lane distance M over two equal tiles: a lane keeps hi if its bit M is set
        (else lo), sends the other one to lane ^ M and adds what that lane sent it."""
        up = ((lane & M) != 0)[None, :]
        src = tl.arange(0, BLOCK_D) ^ M
        return tl.where(up, hi, lo) + _exchange(tl.where(up, lo, hi), src)

    @triton.jit
    def _level(K, lane, r_off, live, R: tl.constexpr, M: tl.constexpr, BLOCK_D: tl.constexpr):
        """Level M of the reduce-scatter on the remaining rows K [R, BLOCK_D]: with R > 1 rows, keep the upper
        or lower half (r_off, the lane's first kept row, grows by R/2 for upper); with one row, a plain
        butterfly add (the sum then sits on both lanes: only the one with bit M clear stays live)."""
        if R > 1:
            K3 = tl.reshape(K, [2, R // 2, BLOCK_D])
            o2 = tl.arange(0, 2)
            K = _halve(_pick3(K3, o2, 0), _pick3(K3, o2, 1), lane, M, BLOCK_D)
            r_off = r_off + tl.where((lane & M) != 0, R // 2, 0)
        else:
            K = K + _exchange(K, tl.arange(0, BLOCK_D) ^ M)
            live = live & ((lane & M) == 0)
        return K, r_off, live

    @triton.jit
    def _store_dbc(dB_e, dB_o, dC_e, dC_o, dB_tok, dC_tok, dstate, vj, BLOCK_D: tl.constexpr):
        """Sum the token's dB and dC contributions ([NP/2, BLOCK_D] each, even / odd dstate entries) over each
        warp's 32 channels and store them at dB_tok / dC_tok (pointers [BLOCK_D]: the token's row of this
        lane's warp partial)."""
        lane = tl.arange(0, BLOCK_D) % 32
        Ke = _halve(dB_e, dC_e, lane, 16, BLOCK_D)  # bit 16: dC
        Ko = _halve(dB_o, dC_o, lane, 16, BLOCK_D)
        K = _halve(Ke, Ko, lane, 8, BLOCK_D)  # bit 8: odd entries
        r_off = tl.zeros([BLOCK_D], dtype=tl.int32)
        live = lane >= 0
        K, r_off, live = _level(K, lane, r_off, live, K.shape[0], 4, BLOCK_D)
        K, r_off, live = _level(K, lane, r_off, live, K.shape[0], 2, BLOCK_D)
        K, r_off, live = _level(K, lane, r_off, live, K.shape[0], 1, BLOCK_D)
        base = tl.where((lane & 16) != 0, dC_tok, dB_tok) + ((lane >> 3) & 1)
        o_f = tl.arange(0, K.shape[0])
        for f in tl.static_range(K.shape[0]):
            n2 = 2 * (r_off + f)
            tl.store(base + n2, _pick(K, o_f, f), mask=live & (n2 + ((lane >> 3) & 1) < dstate) & vj)

    @triton.jit
    def _scan_bwd_body(
        u_base, su_l, s_u_d, dt_base, sdt_l, s_dt_d, z_base, sz_l, s_z_d, g_base, sg_l, s_g_d, scale,
        A_ptr, s_A_d, s_A_n, D_ptr, bias_ptr,
        B_base, sB_l, s_B_n, C_base, sC_l, s_C_n,
        du_base, ddelta_base, dz_base, so_l, s_o_d,
        ck_row, dB_row, dC_row, s_part, s_pblk, dA_row, dD_row, dbias_row,
        pid_d, dim, L, dstate, nchunks,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        REVERSE: tl.constexpr, PACK: tl.constexpr, A_IS_LOG: tl.constexpr, XLANE: tl.constexpr,
        REUSE_BC: tl.constexpr, PREFETCH: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
        NP: tl.constexpr,
    ):
        """The backward of one (batch element, direction) row for channels pid_d * BLOCK_D + [0, BLOCK_D).

        Inputs at the row: u, delta, z, dout (``*_base``, token stride ``s*_l``, channel stride ``s_*_d``;
        dout times ``scale``), B, C (token stride ``s*_l``, dstate stride ``s_*_n``); A [dim, dstate], D,
        delta_bias [dim] (shared by all rows). Outputs at the row: du, ddelta, dz (one layout: ``so_l``,
        ``s_o_d``); ckpt scratch [nchunks, NP, dim] float32 at ``ck_row``; dA [dim, dstate], dD, dbias [dim]
        float32 at ``dA_row`` / ``dD_row`` / ``dbias_row``; the dB / dC partials [L, dstate] float32 at
        ``dB_row`` / ``dC_row`` (token stride ``s_part``), partial k at + k * s_pblk: with XLANE the partial of
        channels [32k, 32k + 32) (one per warp), else the partial of the whole channel block k = pid_d.
        Token positions: memory token of processing step s is L-1-s with REVERSE, else s. REUSE_BC (used with
        CHUNK=1 only): the adjoint step keeps the recompute's B and C in registers instead of reloading them
        (~100 fewer instructions per token, ~30 more registers). PREFETCH: every chunk step loads the next
        chunk's u / delta (/ dout / z and checkpoint in pass 2) before its math, so their memory latency overlaps
        the math instead of stalling the warp (each chunk's loads are otherwise waited on at once)."""
        offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        offs_h = tl.arange(0, NP // 2)
        offs_j = tl.arange(0, CHUNK)
        mask_d = offs_d < dim
        mask_e = (2 * offs_h[:, None] < dstate) & mask_d[None, :]
        mask_o = (2 * offs_h[:, None] + 1 < dstate) & mask_d[None, :]

        A2e, A2o, Dv, bias = _channel_consts_rows(A_ptr, D_ptr, bias_ptr, offs_d, s_A_n, s_A_d, dstate, mask_d,
                                                  HAS_D, HAS_BIAS, A_IS_LOG, BLOCK_D, NP)
        ck_base = ck_row + offs_h[:, None] * dim + offs_d[None, :]
        ck_odd = (NP // 2) * dim
        if XLANE:  # this lane's warp partial
            dB_lane = dB_row + (offs_d // 32).to(tl.int64) * s_pblk
            dC_lane = dC_row + (offs_d // 32).to(tl.int64) * s_pblk
        else:
            dB_blk = dB_row + pid_d.to(tl.int64) * s_pblk
            dC_blk = dC_row + pid_d.to(tl.int64) * s_pblk

        # ---- pass 1: the state at the start of every chunk
        he = tl.zeros([NP // 2, BLOCK_D], dtype=tl.float32)
        ho = tl.zeros([NP // 2, BLOCK_D], dtype=tl.float32)
        if PREFETCH:  # the first chunk's tiles; every step then loads the next chunk's before its math
            u_n = _load_rows(u_base, 0, L, offs_d, su_l, s_u_d, mask_d, BLOCK_D, CHUNK, REVERSE)
            xd_n = _load_rows(dt_base, 0, L, offs_d, sdt_l, s_dt_d, mask_d, BLOCK_D, CHUNK, REVERSE)
        for c in range(0, nchunks - 1):
            tl.store(ck_base + c * NP * dim, he, mask=mask_e)
            tl.store(ck_base + c * NP * dim + ck_odd, ho, mask=mask_o)
            t, mask_t = _chunk_pos(c, offs_j, L, CHUNK, REVERSE)
            m2 = mask_t[:, None] & mask_d[None, :]
            if PREFETCH:
                u = u_n
                xd = xd_n
                u_n = _load_rows(u_base, c + 1, L, offs_d, su_l, s_u_d, mask_d, BLOCK_D, CHUNK, REVERSE)
                xd_n = _load_rows(dt_base, c + 1, L, offs_d, sdt_l, s_dt_d, mask_d, BLOCK_D, CHUNK, REVERSE)
            else:
                u = _load_rows(u_base, c, L, offs_d, su_l, s_u_d, mask_d, BLOCK_D, CHUNK, REVERSE)
                xd = _load_rows(dt_base, c, L, offs_d, sdt_l, s_dt_d, mask_d, BLOCK_D, CHUNK, REVERSE)
            xd, dt = _step_dt(xd, m2, bias, HAS_BIAS, SOFTPLUS)
            dtu = dt * u
            for j in tl.static_range(CHUNK):
                tj, vj = _chunk_pos(c, j, L, CHUNK, REVERSE)
                Be, Bo = _load_pair(B_base, tj, sB_l, s_B_n, offs_h, dstate, vj, PACK, False)
                he, ho = _advance(he, ho, A2e, A2o, _pick(dt, offs_j, j)[None, :], _pick(dtu, offs_j, j)[None, :],
                                  Be, Bo)
        tl.store(ck_base + (nchunks - 1) * NP * dim, he, mask=mask_e)
        tl.store(ck_base + (nchunks - 1) * NP * dim + ck_odd, ho, mask=mask_o)
        tl.debug_barrier()

        # ---- pass 2: chunks in reverse processing order
        ge = tl.zeros([NP // 2, BLOCK_D], dtype=tl.float32)  # adjoint dL/dh of the token after the current one
        go = tl.zeros([NP // 2, BLOCK_D], dtype=tl.float32)
        ane = tl.zeros([NP // 2, BLOCK_D], dtype=tl.float32)  # its decay
        ano = tl.zeros([NP // 2, BLOCK_D], dtype=tl.float32)
        dAe = tl.zeros([NP // 2, BLOCK_D], dtype=tl.float32)
        dAo = tl.zeros([NP // 2, BLOCK_D], dtype=tl.float32)
        dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        db_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        if PREFETCH:  # the last chunk's tiles and checkpoint
            cl = nchunks - 1
            u_n = _load_rows(u_base, cl, L, offs_d, su_l, s_u_d, mask_d, BLOCK_D, CHUNK, REVERSE)
            xd_n = _load_rows(dt_base, cl, L, offs_d, sdt_l, s_dt_d, mask_d, BLOCK_D, CHUNK, REVERSE)
            g_n = _load_rows(g_base, cl, L, offs_d, sg_l, s_g_d, mask_d, BLOCK_D, CHUNK, REVERSE)
            if HAS_Z:
                z_n = _load_rows(z_base, cl, L, offs_d, sz_l, s_z_d, mask_d, BLOCK_D, CHUNK, REVERSE)
            he_n = tl.load(ck_base + (nchunks - 1) * NP * dim, mask=mask_e, other=0.0)
            ho_n = tl.load(ck_base + (nchunks - 1) * NP * dim + ck_odd, mask=mask_o, other=0.0)
        for ci in range(0, nchunks):
            c = nchunks - 1 - ci
            t, mask_t = _chunk_pos(c, offs_j, L, CHUNK, REVERSE)
            m2 = mask_t[:, None] & mask_d[None, :]
            if PREFETCH:
                u = u_n
                xd = xd_n
                dout = g_n * scale
                if HAS_Z:
                    zz = z_n
                he = he_n
                ho = ho_n
                cp = tl.maximum(c - 1, 0)  # the next chunk to process (chunk 0 again after the last: unused)
                u_n = _load_rows(u_base, cp, L, offs_d, su_l, s_u_d, mask_d, BLOCK_D, CHUNK, REVERSE)
                xd_n = _load_rows(dt_base, cp, L, offs_d, sdt_l, s_dt_d, mask_d, BLOCK_D, CHUNK, REVERSE)
                g_n = _load_rows(g_base, cp, L, offs_d, sg_l, s_g_d, mask_d, BLOCK_D, CHUNK, REVERSE)
                if HAS_Z:
                    z_n = _load_rows(z_base, cp, L, offs_d, sz_l, s_z_d, mask_d, BLOCK_D, CHUNK, REVERSE)
                he_n = tl.load(ck_base + cp * NP * dim, mask=mask_e, other=0.0)
                ho_n = tl.load(ck_base + cp * NP * dim + ck_odd, mask=mask_o, other=0.0)
            else:
                u = _load_rows(u_base, c, L, offs_d, su_l, s_u_d, mask_d, BLOCK_D, CHUNK, REVERSE)
                xd = _load_rows(dt_base, c, L, offs_d, sdt_l, s_dt_d, mask_d, BLOCK_D, CHUNK, REVERSE)
                dout = _load_rows(g_base, c, L, offs_d, sg_l, s_g_d, mask_d, BLOCK_D, CHUNK, REVERSE) * scale
                if HAS_Z:
                    zz = _load_rows(z_base, c, L, offs_d, sz_l, s_z_d, mask_d, BLOCK_D, CHUNK, REVERSE)
                he = tl.load(ck_base + c * NP * dim, mask=mask_e, other=0.0)
                ho = tl.load(ck_base + c * NP * dim + ck_odd, mask=mask_o, other=0.0)
            xd, dt = _step_dt(xd, m2, bias, HAS_BIAS, SOFTPLUS)
            dtu = dt * u

            # recompute the chunk's states (kept in registers) and outputs
            hse = tl.zeros([CHUNK, NP // 2, BLOCK_D], dtype=tl.float32)
            hso = tl.zeros([CHUNK, NP // 2, BLOCK_D], dtype=tl.float32)
            y = tl.zeros([CHUNK, BLOCK_D], dtype=tl.float32)
            for j in tl.static_range(CHUNK):
                tj, vj = _chunk_pos(c, j, L, CHUNK, REVERSE)
                Be, Bo = _load_pair(B_base, tj, sB_l, s_B_n, offs_h, dstate, vj, PACK, False)
                Ce, Co = _load_pair(C_base, tj, sC_l, s_C_n, offs_h, dstate, vj, PACK, False)
                he, ho = _advance(he, ho, A2e, A2o, _pick(dt, offs_j, j)[None, :], _pick(dtu, offs_j, j)[None, :],
                                  Be, Bo)
                yj = _dot_state(he, ho, Ce, Co, NP)
                hse = tl.where(offs_j[:, None, None] == j, he[None, :, :], hse)
                hso = tl.where(offs_j[:, None, None] == j, ho[None, :, :], hso)
                y = _put(y, offs_j, j, yj)
            if HAS_D:
                y += Dv[None, :] * u
            if HAS_Z:
                sz = _sigmoid(zz)
                dy = dout * zz * sz
                dz = dout * y * sz * (1.0 + zz * (1.0 - sz))
                _store_rows(dz_base, c, L, offs_d, so_l, s_o_d, dz, mask_d, CHUNK, REVERSE)
            else:
                dy = dout

            # adjoint sweep from the chunk's last token to its first
            du = tl.zeros([CHUNK, BLOCK_D], dtype=tl.float32)
            ddt = tl.zeros([CHUNK, BLOCK_D], dtype=tl.float32)
            for jj in tl.static_range(CHUNK):
                j = CHUNK - 1 - jj
                if (CHUNK > 1) or (not REUSE_BC):  # else the recompute's B and C (this token's) are still live
                    tj, vj = _chunk_pos(c, j, L, CHUNK, REVERSE)
                    Be, Bo = _load_pair(B_base, tj, sB_l, s_B_n, offs_h, dstate, vj, PACK, False)
                    Ce, Co = _load_pair(C_base, tj, sC_l, s_C_n, offs_h, dstate, vj, PACK, False)
                dt_j = _pick(dt, offs_j, j)
                dtu_j = _pick(dtu, offs_j, j)
                dy_j = _pick(dy, offs_j, j)
                ge = ane * ge + Ce[:, None] * dy_j[None, :]
                go = ano * go + Co[:, None] * dy_j[None, :]
                hje = _pick3(hse, offs_j, j)
                hjo = _pick3(hso, offs_j, j)
                we = ge * (hje - Be[:, None] * dtu_j[None, :])  # g_t * a_t * h_{t-1}
                wo = go * (hjo - Bo[:, None] * dtu_j[None, :])
                gB = tl.sum(ge * Be[:, None], axis=0) + tl.sum(go * Bo[:, None], axis=0)
                wA = tl.sum(we * A2e, axis=0) + tl.sum(wo * A2o, axis=0)
                du = _put(du, offs_j, j, dt_j * gB)
                ddt = _put(ddt, offs_j, j, _pick(u, offs_j, j) * gB + wA * 0.6931471805599453)
                dAe += we * dt_j[None, :]
                dAo += wo * dt_j[None, :]
                if XLANE:
                    _store_dbc(ge * dtu_j[None, :], go * dtu_j[None, :], hje * dy_j[None, :], hjo * dy_j[None, :],
                               dB_lane + tj * s_part, dC_lane + tj * s_part, dstate, vj, BLOCK_D)
                else:
                    p = dB_blk + tj * s_part + 2 * offs_h
                    tl.store(p, tl.sum(ge * dtu_j[None, :], axis=1), mask=(2 * offs_h < dstate) & vj)
                    tl.store(p + 1, tl.sum(go * dtu_j[None, :], axis=1), mask=(2 * offs_h + 1 < dstate) & vj)
                    p = dC_blk + tj * s_part + 2 * offs_h
                    tl.store(p, tl.sum(hje * dy_j[None, :], axis=1), mask=(2 * offs_h < dstate) & vj)
                    tl.store(p + 1, tl.sum(hjo * dy_j[None, :], axis=1), mask=(2 * offs_h + 1 < dstate) & vj)
                ane = tl.exp2(dt_j[None, :] * A2e)
                ano = tl.exp2(dt_j[None, :] * A2o)
            if HAS_D:
                du += Dv[None, :] * dy
                dD_acc += tl.sum(dy * u, axis=0)
            if SOFTPLUS:
                ddt = ddt * _sigmoid(xd)
            ddt = tl.where(m2, ddt, 0.0)
            db_acc += tl.sum(ddt, axis=0)
            _store_rows(du_base, c, L, offs_d, so_l, s_o_d, du, mask_d, CHUNK, REVERSE)
            _store_rows(ddelta_base, c, L, offs_d, so_l, s_o_d, ddt, mask_d, CHUNK, REVERSE)

        for k in tl.static_range(NP // 2):  # one dstate entry at a time (see _channel_consts_rows)
            p = dA_row + offs_d * dstate + 2 * k
            tl.store(p, _pick(dAe, offs_h, k), mask=mask_d & (2 * k < dstate))
            tl.store(p + 1, _pick(dAo, offs_h, k), mask=mask_d & (2 * k + 1 < dstate))
        tl.store(dD_row + offs_d, dD_acc, mask=mask_d)
        tl.store(dbias_row + offs_d, db_acc, mask=mask_d)

    @triton.jit(do_not_specialize=_SCAN_NOSPEC)
    def _scan_bwd_xlane_kernel(
        u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr,
        ckpt_ptr, du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
        batch, dim, L, dstate, nchunks,
        s_u_b, s_u_d, s_u_l,
        s_dt_b, s_dt_d, s_dt_l,
        s_A_d, s_A_n,
        s_B_b, s_B_n, s_B_l,
        s_C_b, s_C_n, s_C_l,
        s_z_b, s_z_d, s_z_l,
        s_g_b, s_g_d, s_g_l,
        s_o_b, s_o_d, s_o_l,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
        SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr, PACK: tl.constexpr, A_IS_LOG: tl.constexpr,
        XLANE: tl.constexpr, REUSE_BC: tl.constexpr, PREFETCH: tl.constexpr, BLOCK_D: tl.constexpr,
        CHUNK: tl.constexpr, NP: tl.constexpr,
    ):
        """Gradients of scan's ``_scan_fwd_kernel`` for dout [batch, dim, L] (strides s_g_*). Outputs: du,
        ddelta, dz [batch, dim, L] in the input dtypes (strides s_o_*); float32 partial sums dA [batch, dim,
        dstate], dD, dbias [batch, dim], dB, dC [n_parts, batch, L, dstate] with n_parts = n_dblocks * BLOCK_D / 32
        (XLANE) or n_dblocks; scratch ckpt [batch, nchunks, 2, NP/2, dim] (the state at every chunk start, even /
        odd halves). Grid (batch, channel blocks)."""
        pid_b = tl.program_id(0).to(tl.int64)
        pid_d = tl.program_id(1)
        io = pid_b * s_o_b  # du, ddelta, dz share one layout (strides s_o_*)
        _scan_bwd_body(
            u_ptr + pid_b * s_u_b, s_u_l, s_u_d, delta_ptr + pid_b * s_dt_b, s_dt_l, s_dt_d,
            z_ptr + pid_b * s_z_b, s_z_l, s_z_d, dout_ptr + pid_b * s_g_b, s_g_l, s_g_d, 1.0,
            A_ptr, s_A_d, s_A_n, D_ptr, bias_ptr,
            B_ptr + pid_b * s_B_b, s_B_l, s_B_n, C_ptr + pid_b * s_C_b, s_C_l, s_C_n,
            du_ptr + io, ddelta_ptr + io, dz_ptr + io, s_o_l, s_o_d,
            ckpt_ptr + pid_b * nchunks * NP * dim,
            dB_ptr + pid_b * L * dstate, dC_ptr + pid_b * L * dstate, dstate, batch * L * dstate,
            dA_ptr + pid_b * dim * dstate, dD_ptr + pid_b * dim, dbias_ptr + pid_b * dim,
            pid_d, dim, L, dstate, nchunks,
            HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, REVERSE, PACK, A_IS_LOG, XLANE, REUSE_BC, PREFETCH, BLOCK_D, CHUNK,
            NP,
        )


    @triton.jit(do_not_specialize=_BIDIR_NOSPEC)
    def _scan_bwd_bidir_xlane_kernel(
        uf_ptr, ub_ptr, dtf_ptr, dtb_ptr, Af_ptr, Ab_ptr, Bf_ptr, Bb_ptr, Cf_ptr, Cb_ptr, Df_ptr, Db_ptr,
        z_ptr, biasf_ptr, biasb_ptr, dout_ptr, scale,
        ckpt_ptr, du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
        batch, dim, L, dstate, nchunks,
        s_u_b, s_u_d, s_u_l,
        s_dt_b, s_dt_d, s_dt_l,
        s_A_d, s_A_n,
        s_B_b, s_B_n, s_B_l,
        s_C_b, s_C_n, s_C_l,
        s_z_b, s_z_d, s_z_l,
        s_g_r, s_g_b, s_g_d, s_g_l,
        s_o_r, s_o_b, s_o_d, s_o_l,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
        SOFTPLUS: tl.constexpr, PACK: tl.constexpr, A_IS_LOG: tl.constexpr,
        XLANE: tl.constexpr, REUSE_BC: tl.constexpr, PREFETCH: tl.constexpr, BLOCK_D: tl.constexpr,
        CHUNK: tl.constexpr, NP: tl.constexpr,
    ):
        """Gradients of scan's ``_scan_bidir_fwd_kernel`` for dout [2, batch, dim, L] (strides s_g_*; the
        gradient of the scaled output, scaled back here). Outputs du, ddelta, dz [2, batch, dim, L] (strides
        s_o_*; dz per direction, summed by the caller); float32 partial sums dA [2, batch, dim, dstate], dD, dbias
        [2, batch, dim], dB, dC [n_parts, 2, batch, L, dstate] (n_parts as in the single-direction kernel);
        scratch ckpt [2, batch, nchunks, 2, NP/2, dim]. Grid (batch, channel blocks, 2 directions); the backward
        direction walks memory from token L-1 (bases there, token strides negated, REVERSE=False)."""
        pid_b = tl.program_id(0).to(tl.int64)
        pid_d = tl.program_id(1)
        rev = tl.program_id(2)
        bwd = rev == 1
        t0 = rev * (L - 1)
        sgn = 1 - 2 * rev
        pid_rb = rev.to(tl.int64) * batch + pid_b  # (direction, batch element) row of the scratch / partials
        u_base, su_l = _dir_base(tl.where(bwd, ub_ptr, uf_ptr), pid_b, s_u_b, s_u_l, t0, sgn)
        dt_base, sdt_l = _dir_base(tl.where(bwd, dtb_ptr, dtf_ptr), pid_b, s_dt_b, s_dt_l, t0, sgn)
        z_base, sz_l = _dir_base(z_ptr, pid_b, s_z_b, s_z_l, t0, sgn)
        g_base, sg_l = _dir_base(dout_ptr + rev.to(tl.int64) * s_g_r, pid_b, s_g_b, s_g_l, t0, sgn)
        B_base, sB_l = _dir_base(tl.where(bwd, Bb_ptr, Bf_ptr), pid_b, s_B_b, s_B_l, t0, sgn)
        C_base, sC_l = _dir_base(tl.where(bwd, Cb_ptr, Cf_ptr), pid_b, s_C_b, s_C_l, t0, sgn)
        io = rev.to(tl.int64) * s_o_r  # du, ddelta, dz share one layout (strides s_o_*)
        du_base, so_l = _dir_base(du_ptr + io, pid_b, s_o_b, s_o_l, t0, sgn)
        ddelta_base, so_l = _dir_base(ddelta_ptr + io, pid_b, s_o_b, s_o_l, t0, sgn)
        dz_base, so_l = _dir_base(dz_ptr + io, pid_b, s_o_b, s_o_l, t0, sgn)
        part_row = (pid_rb * L + t0) * dstate  # memory token t0 of the row; processing order steps by sgn
        _scan_bwd_body(
            u_base, su_l, s_u_d, dt_base, sdt_l, s_dt_d, z_base, sz_l, s_z_d, g_base, sg_l, s_g_d, scale,
            tl.where(bwd, Ab_ptr, Af_ptr), s_A_d, s_A_n, tl.where(bwd, Db_ptr, Df_ptr),
            tl.where(bwd, biasb_ptr, biasf_ptr),
            B_base, sB_l, s_B_n, C_base, sC_l, s_C_n,
            du_base, ddelta_base, dz_base, so_l, s_o_d,
            ckpt_ptr + pid_rb * nchunks * NP * dim,
            dB_ptr + part_row, dC_ptr + part_row, sgn * dstate, 2 * batch * L * dstate,
            dA_ptr + pid_rb * dim * dstate, dD_ptr + pid_rb * dim, dbias_ptr + pid_rb * dim,
            pid_d, dim, L, dstate, nchunks,
            HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, False, PACK, A_IS_LOG, XLANE, REUSE_BC, PREFETCH, BLOCK_D, CHUNK,
            NP,
        )


def _plan(dim: int, L: int, dstate: int, dev: torch.device):
    """(channel blocks, dB / dC partials, chunks, the launch's config keywords) for BWD_XLANE_CONFIG."""
    cfg = BWD_XLANE_CONFIG
    bd, chunk, nw = cfg["BLOCK_D"], cfg["CHUNK"], cfg["num_warps"]
    if XLANE and bd != 32 * nw:
        raise ValueError(f"BWD_XLANE_CONFIG: the lane exchange needs BLOCK_D == 32 * num_warps, got {cfg}")
    n_dblk = (dim + bd - 1) // bd
    meta = dict(XLANE=XLANE, REUSE_BC=cfg.get("reuse_bc", True), PREFETCH=cfg.get("prefetch", False),
                BLOCK_D=bd, CHUNK=chunk, NP=_scan._np(dstate), num_warps=nw, num_stages=1)
    if cfg.get("maxnreg") and dev.type == "cuda":  # (a compiler option: the interpreter has none)
        meta["maxnreg"] = cfg["maxnreg"]
    return n_dblk, n_dblk * (bd // 32) if XLANE else n_dblk, (L + chunk - 1) // chunk, meta


def bwd(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, a_is_log=False):
    """The single-direction backward (:func:`rmeeto.ops.triton.scan._bwd` calls it): (du, ddelta, dA, dB, dC, dD,
    dz, ddelta_bias) for dout [batch, dim, L]; du, ddelta, dz laid out like u, dB / dC [batch, dstate, L] views of
    [batch, L, dstate], dD / ddelta_bias [dim] (float32 when D / delta_bias are absent), dz empty when z is
    absent."""
    _scan._require_runnable(u)
    batch, dim, L = u.shape
    dstate = A.shape[1]
    dev = u.device
    n_dblk, n_parts, nchunks, meta = _plan(dim, L, dstate, dev)
    alloc, like = _scan._alloc, _scan._like_layout
    NP = meta["NP"]
    du = like(u, u.dtype)
    ddelta = like(u, delta.dtype)
    dz = like(u, z.dtype) if z is not None else torch.empty(0, dtype=u.dtype, device=dev)
    if batch * dim * L == 0:
        du.zero_(), ddelta.zero_(), dz.zero_()
        return (du, ddelta, torch.zeros_like(A), torch.zeros_like(B), torch.zeros_like(C),
                torch.zeros(dim, dtype=D.dtype if D is not None else torch.float32, device=dev), dz,
                torch.zeros(dim, dtype=delta_bias.dtype if delta_bias is not None else torch.float32, device=dev))
    ckpt = alloc((batch, nchunks, NP, dim), torch.float32, dev)
    dA_p = alloc((batch, dim, dstate), torch.float32, dev)
    dB_p = alloc((n_parts, batch, L, dstate), torch.float32, dev)
    dC_p = alloc((n_parts, batch, L, dstate), torch.float32, dev)
    dD_p = alloc((batch, dim), torch.float32, dev)
    dbias_p = alloc((batch, dim), torch.float32, dev)
    zz = z if z is not None else u
    launch(
        _scan_bwd_xlane_kernel, (batch, n_dblk), dev,
        u, delta, A, B, C,
        D if D is not None else A, zz, delta_bias if delta_bias is not None else A, dout,
        ckpt, du, ddelta, dz if z is not None else du, dA_p, dB_p, dC_p, dD_p, dbias_p,
        batch, dim, L, dstate, nchunks,
        *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *zz.stride(), *dout.stride(),
        *du.stride(),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus), REVERSE=bool(reverse), PACK=_scan._bc_mode(B, C), A_IS_LOG=bool(a_is_log),
        **meta,
    )
    dA = dA_p.sum(0)
    if a_is_log:  # dL/dA_log = dL/dA * A = -(dL/dA * exp(A_log))
        dA = dA.mul_(torch.exp(A.float())).neg_()
    dA = dA.to(A.dtype)
    dB = dB_p.sum(0).transpose(1, 2).to(B.dtype)  # [batch, dstate, L] view of [batch, L, dstate]
    dC = dC_p.sum(0).transpose(1, 2).to(C.dtype)
    dD = dD_p.sum(0).to(D.dtype if D is not None else torch.float32)
    dbias = dbias_p.sum(0).to(delta_bias.dtype if delta_bias is not None else torch.float32)
    return du, ddelta, dA, dB, dC, dD, dz, dbias


def bwd_bidir(dout, u_f, u_b, delta_f, delta_b, A_f, A_b, B_f, B_b, C_f, C_b, D_f, D_b, z, bias_f, bias_b,
              delta_softplus, scale, a_is_log):
    """The two-direction backward, in one launch (:func:`rmeeto.ops.triton.scan._bwd_bidir` calls it): du, ddelta
    [2, batch, dim, L], dA [2, dim, dstate], dB, dC [2, batch, dstate, L], dD, dbias [2, dim] (float32 when
    D / delta_bias are absent), dz [batch, dim, L] summed over the directions (empty when z is absent)."""
    _scan._require_runnable(u_f)
    batch, dim, L = u_f.shape
    dstate = A_f.shape[1]
    dev = u_f.device
    like2, alloc = _scan._like_layout2, _scan._alloc
    du = like2(u_f, u_f.dtype)
    ddelta = like2(u_f, delta_f.dtype)
    dz2 = like2(u_f, z.dtype) if z is not None else None
    D_dtype = D_f.dtype if D_f is not None else torch.float32
    bias_dtype = bias_f.dtype if bias_f is not None else torch.float32
    if batch * dim * L == 0:
        du.zero_(), ddelta.zero_()
        return (du, ddelta, torch.zeros((2,) + tuple(A_f.shape), dtype=A_f.dtype, device=dev),
                torch.zeros((2,) + tuple(B_f.shape), dtype=B_f.dtype, device=dev),
                torch.zeros((2,) + tuple(C_f.shape), dtype=C_f.dtype, device=dev),
                torch.zeros(2, dim, dtype=D_dtype, device=dev),
                torch.zeros_like(z) if z is not None else torch.empty(0, dtype=u_f.dtype, device=dev),
                torch.zeros(2, dim, dtype=bias_dtype, device=dev))
    n_dblk, n_parts, nchunks, meta = _plan(dim, L, dstate, dev)
    ckpt = alloc((2, batch, nchunks, meta["NP"], dim), torch.float32, dev)
    dA_p = alloc((2, batch, dim, dstate), torch.float32, dev)
    dB_p = alloc((n_parts, 2, batch, L, dstate), torch.float32, dev)
    dC_p = alloc((n_parts, 2, batch, L, dstate), torch.float32, dev)
    dD_p = alloc((2, batch, dim), torch.float32, dev)
    dbias_p = alloc((2, batch, dim), torch.float32, dev)
    zz = z if z is not None else u_f
    flags = _scan._bidir_flags(D_f, z, bias_f, delta_softplus, a_is_log, B_f, C_f, B_b, C_b, meta["NP"])
    flags.pop("NP")
    launch(
        _scan_bwd_bidir_xlane_kernel, (batch, n_dblk, 2), dev,
        u_f, u_b, delta_f, delta_b, A_f, A_b, B_f, B_b, C_f, C_b,
        D_f if D_f is not None else A_f, D_b if D_b is not None else A_b, zz,
        bias_f if bias_f is not None else A_f, bias_b if bias_b is not None else A_b, dout, float(scale),
        ckpt, du, ddelta, dz2 if z is not None else du, dA_p, dB_p, dC_p, dD_p, dbias_p,
        batch, dim, L, dstate, nchunks,
        *u_f.stride(), *delta_f.stride(), *A_f.stride(), *B_f.stride(), *C_f.stride(), *zz.stride(),
        *dout.stride(), *du.stride(),
        **flags, **meta,
    )
    # one reduction (and one cast) per quantity for both directions
    dA = dA_p.sum(1)  # [2, dim, dstate]
    if a_is_log:  # dL/dA_log = dL/dA * A
        dA = dA * -torch.exp(torch.stack([A_f, A_b]).float())
    dA = dA.to(A_f.dtype)
    dB = dB_p.sum(0).to(B_f.dtype).transpose(2, 3)  # [2, batch, dstate, L] view of [2, batch, L, dstate]
    dC = dC_p.sum(0).to(C_f.dtype).transpose(2, 3)
    dD = dD_p.sum(1).to(D_dtype)
    dbias = dbias_p.sum(1).to(bias_dtype)
    dz = torch.add(dz2[0], dz2[1]) if z is not None else torch.empty(0, dtype=u_f.dtype, device=dev)
    return du, ddelta, dA, dB, dC, dD, dz, dbias


# the one dispatch point (scan._bwd / scan._bwd_bidir) calls these (see scan._BWD)
_scan._BWD.update(bwd=bwd, bwd_bidir=bwd_bidir)

"""Fused selective scan in Triton: forward and backward kernels behind one PyTorch custom op.

Semantics and shapes are those of :mod:`rmeeto.ops.selective_scan` (see its docstring):

    u, delta, z : [batch, dim, length]  (fp32 / bf16 / fp16, any strides)
    A           : [dim, dstate]         B, C : [batch, dstate, length] (any strides)
    D, delta_bias : [dim]               out  : [batch, dim, length] in u's dtype, contiguous

Everything is computed in float32: softplus(delta + delta_bias), the discretisation exp(dt * A) and
dt * B * u, the recurrence, the C contraction, the D skip term and the SiLU(z) gate are fused in one pass.
``reverse=True`` runs the recurrence from the last token to the first by reading memory backwards (no
flipped copies).

Kernel layout. One program per (batch element, block of BLOCK_D channels) holds the state
h[BLOCK_D, dstate] and walks over time in chunks of CHUNK tokens. Inside a chunk the recurrence
h_t = a_t * h_{t-1} + b_t is evaluated as an associative scan over a (CHUNK x BLOCK_D x dstate) register
tile (the carried-in state is folded into the first element), so every token's state of the chunk is
available at once: the outputs y_t = C_t . h_t are one reduction over dstate and the tile loads and stores
are whole blocks. With the default axis order (ORDER=1, time first) Triton keeps the chunk's time steps
inside each thread, so the scan is a sequential in-register loop (no shuffles, no shared memory); ORDER=0
spreads time over lanes and warps and is about 2x slower on an H200.

Backward (nothing but the inputs is saved by the forward):
  1. recompute the forward scan, storing h at every chunk start (a [batch, nchunks, dim, dstate] float32
     scratch buffer; the only temporary that scales with length / CHUNK);
  2. walk the chunks backwards: recompute the chunk's states h_t from its checkpoint (forward scan), then
     the adjoint g_t = dL/dh_t = C_t * dy_t + a_{t+1} * g_{t+1} with a reverse scan (carrying g of the
     next chunk's first token), and from (h_t, g_t) every gradient:
        w_t    = g_t * (h_t - b_t)            (= g_t * a_t * h_{t-1}, no division, no shifted states)
        ddt_t  = u_t * sum_n g_t B_t + sum_n w_t A        dA += sum_t dt_t w_t
        du_t   = dt_t * sum_n g_t B_t + D dy_t           dB_t = sum_d g_t dt_t u_t   dC_t = sum_d dy_t h_t
     dB and dC (shared by all channels) are written per channel block into a partial buffer and summed
     afterwards (deterministic, no atomics); dA, dD and d(delta_bias) likewise per batch element.
"""

from __future__ import annotations

import contextlib
import os
from typing import Optional

import torch

from rmeeto.ops.selective_scan import _check_shapes

Tensor = torch.Tensor

try:  # Triton is optional: without it the module imports but is_available() is False
    import triton
    import triton.language as tl

    _HAS_TRITON = True
except Exception:  # ImportError, or a broken install
    triton = None
    tl = None
    _HAS_TRITON = False

__all__ = ["is_available", "selective_scan_triton", "FWD_CONFIG", "BWD_CONFIG", "CANDIDATE_FWD", "CANDIDATE_BWD"]

# Tile configuration (ORDER: see the kernels section). benchmarks/bench_scan_gpu.py sweeps CANDIDATE_*
# and overrides these; tests/test_gpu_scan.py checks every candidate for correctness. Defaults: the sweep's
# best on an H200 for Vim-S shapes (batch 128, dim 768, dstate 16, length 197, bf16): forward 0.77 ms;
# backward 4.60 ms (BLOCK_D 4 / 1 warp measured 4.49 ms but doubles the dB/dC partial buffers).
FWD_CONFIG = {"ORDER": 1, "BLOCK_D": 16, "CHUNK": 8, "num_warps": 4}
BWD_CONFIG = {"ORDER": 1, "BLOCK_D": 8, "CHUNK": 8, "num_warps": 2}
_KEYS = ("ORDER", "BLOCK_D", "CHUNK", "num_warps")
CANDIDATE_FWD = [dict(zip(_KEYS, c)) for c in [
    (0, 4, 32, 4), (1, 8, 16, 4), (1, 16, 16, 4), (1, 8, 16, 2), (1, 8, 8, 2), (1, 16, 8, 4), (1, 32, 8, 8),
    (1, 8, 32, 4), (1, 4, 16, 1),
]]
CANDIDATE_BWD = [dict(zip(_KEYS, c)) for c in [
    (0, 4, 32, 4), (1, 8, 16, 4), (1, 4, 16, 2), (1, 8, 8, 2), (1, 16, 8, 4), (1, 8, 8, 4), (1, 16, 16, 8),
    (1, 4, 8, 1), (1, 16, 8, 8),
]]

# Tests set this to fill every buffer the op allocates with NaN, so an element the kernels forget to write
# shows up in the result instead of silently holding stale memory.
_POISON = False


def is_available() -> bool:
    """True when Triton imports and a CUDA device is present."""
    return _HAS_TRITON and torch.cuda.is_available()


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _alloc(shape, dtype, device) -> Tensor:
    if _POISON:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _device_guard(t: Tensor):
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


# ------------------------------------------------------------------------------------------- kernels
# ORDER picks the axis order of the [.., .., dstate] register tile, which decides how Triton spreads it over
# threads (lanes fill the last axis first, then the middle one; warps follow):
#   ORDER 0: [BLOCK_D, CHUNK, NP]   ORDER 1: [CHUNK, BLOCK_D, NP] (time mostly inside each thread)
# "DT" tiles (u, delta, z, outputs) are [BLOCK_D, CHUNK] for ORDER 0 and [CHUNK, BLOCK_D] for ORDER 1;
# "TN" tiles (B, C, dB, dC) are [CHUNK, NP] and "DN" tensors (A, h, dA) [BLOCK_D, NP] in both.
if _HAS_TRITON:
    @triton.jit
    def _lin_combine(a1, b1, a2, b2):
        # composition of affine maps x -> a1 x + b1 followed by x -> a2 x + b2
        return a1 * a2, b1 * a2 + b2

    @triton.jit
    def _softplus(x):
        # log1p(exp(x)) accurate for negative x (Kahan's log1p trick), identity above 20
        e = tl.exp(x)
        w = 1.0 + e
        lp = tl.where(w == 1.0, e, tl.log(w) * (e / (w - 1.0)))
        return tl.where(x > 20.0, x, lp)

    # ---- layout helpers (ORDER is a constexpr: every branch is resolved at compile time)
    @triton.jit
    def _dt2(d_vec, t_vec, ORDER: tl.constexpr):
        """Combine a [BLOCK_D] and a [CHUNK] vector into a DT tile by broadcasting (offsets, masks)."""
        if ORDER == 0:
            r = d_vec[:, None] + t_vec[None, :]
        else:
            r = t_vec[:, None] + d_vec[None, :]
        return r

    @triton.jit
    def _dt2_and(d_mask, t_mask, ORDER: tl.constexpr):
        if ORDER == 0:
            r = d_mask[:, None] & t_mask[None, :]
        else:
            r = t_mask[:, None] & d_mask[None, :]
        return r

    @triton.jit
    def _d_col(x, ORDER: tl.constexpr):
        """[BLOCK_D] vector -> broadcastable against a DT tile."""
        if ORDER == 0:
            r = x[:, None]
        else:
            r = x[None, :]
        return r

    @triton.jit
    def _t_row(x, ORDER: tl.constexpr):
        """[CHUNK] vector -> broadcastable against a DT tile."""
        if ORDER == 0:
            r = x[None, :]
        else:
            r = x[:, None]
        return r

    @triton.jit
    def _tn3(x, ORDER: tl.constexpr):
        """[CHUNK, NP] -> broadcastable 3D."""
        if ORDER == 0:
            r = x[None, :, :]
        else:
            r = x[:, None, :]
        return r

    @triton.jit
    def _dn3(x, ORDER: tl.constexpr):
        """[BLOCK_D, NP] -> broadcastable 3D."""
        if ORDER == 0:
            r = x[:, None, :]
        else:
            r = x[None, :, :]
        return r

    @triton.jit
    def _j3(offs_j, ORDER: tl.constexpr):
        """[CHUNK] position-in-chunk -> broadcastable 3D."""
        if ORDER == 0:
            r = offs_j[None, :, None]
        else:
            r = offs_j[:, None, None]
        return r

    @triton.jit
    def _sum_t3(x, ORDER: tl.constexpr):
        """3D -> [BLOCK_D, NP] (sum over time)."""
        if ORDER == 0:
            r = tl.sum(x, axis=1)
        else:
            r = tl.sum(x, axis=0)
        return r

    @triton.jit
    def _sum_d3(x, ORDER: tl.constexpr):
        """3D -> [CHUNK, NP] (sum over channels)."""
        if ORDER == 0:
            r = tl.sum(x, axis=0)
        else:
            r = tl.sum(x, axis=1)
        return r

    @triton.jit
    def _sum_t2(x, ORDER: tl.constexpr):
        """DT tile -> [BLOCK_D] (sum over time)."""
        if ORDER == 0:
            r = tl.sum(x, axis=1)
        else:
            r = tl.sum(x, axis=0)
        return r

    @triton.jit
    def _scan_t(a, b, ORDER: tl.constexpr, REV: tl.constexpr):
        """Inclusive scan of the affine maps (a, b) along time (reverse: from the end of the chunk)."""
        if ORDER == 0:
            _, r = tl.associative_scan((a, b), axis=1, combine_fn=_lin_combine, reverse=REV)
        else:
            _, r = tl.associative_scan((a, b), axis=0, combine_fn=_lin_combine, reverse=REV)
        return r

    @triton.jit
    def _load_dt_tile(base, offs_d, t, s_d, s_l, m2, ORDER: tl.constexpr):
        return tl.load(base + _dt2(offs_d * s_d, t * s_l, ORDER), mask=m2, other=0.0).to(tl.float32)

    @triton.jit
    def _store_dt_tile(base, offs_d, t, s_d, s_l, x, m2, ORDER: tl.constexpr):
        tl.store(base + _dt2(offs_d * s_d, t * s_l, ORDER), x.to(base.dtype.element_ty), mask=m2)

    @triton.jit
    def _dt_from_delta(xd, m2, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, bias, ORDER: tl.constexpr):
        """delta -> (delta + bias, dt); dt = 0 on invalid positions (the identity step)."""
        if HAS_BIAS:
            xd = xd + _d_col(bias, ORDER)
        if SOFTPLUS:
            dt = _softplus(xd)
        else:
            dt = xd
        return xd, tl.where(m2, dt, 0.0)

    @triton.jit
    def _load_tn(base, t, offs_n, s_n, s_l, mtn):
        return tl.load(base + t[:, None] * s_l + offs_n[None, :] * s_n, mask=mtn, other=0.0).to(tl.float32)

    @triton.jit
    def _chunk_states(dt, u, Bt, A2, h, offs_j, ORDER: tl.constexpr):
        """All states of one chunk (3D tile) starting from state h [BLOCK_D, NP].
        Returns (bx, hs): the per-step input dt B u and the states."""
        a = tl.exp2(dt[:, :, None] * _dn3(A2, ORDER))
        bx = (dt * u)[:, :, None] * _tn3(Bt, ORDER)
        bxc = tl.where(_j3(offs_j, ORDER) == 0, bx + a * _dn3(h, ORDER), bx)
        hs = _scan_t(a, bxc, ORDER, False)
        return bx, hs

    @triton.jit
    def _last_state(hs, offs_j, CHUNK: tl.constexpr, ORDER: tl.constexpr):
        return _sum_t3(tl.where(_j3(offs_j, ORDER) == CHUNK - 1, hs, 0.0), ORDER)

    @triton.jit(do_not_specialize=["dim", "L", "dstate"])
    def _scan_fwd_kernel(
        u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr,
        dim, L, dstate,
        s_u_b, s_u_d, s_u_l,
        s_dt_b, s_dt_d, s_dt_l,
        s_A_d, s_A_n,
        s_B_b, s_B_n, s_B_l,
        s_C_b, s_C_n, s_C_l,
        s_z_b, s_z_d, s_z_l,
        s_o_b, s_o_d, s_o_l,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
        SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr,
        BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, NP: tl.constexpr, ORDER: tl.constexpr,
    ):
        pid_b = tl.program_id(0).to(tl.int64)
        pid_d = tl.program_id(1)
        offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        offs_n = tl.arange(0, NP)
        offs_j = tl.arange(0, CHUNK)
        mask_d = offs_d < dim
        mask_n = offs_n < dstate

        A = tl.load(A_ptr + offs_d[:, None] * s_A_d + offs_n[None, :] * s_A_n,
                    mask=mask_d[:, None] & mask_n[None, :], other=0.0).to(tl.float32)
        A2 = A * 1.4426950408889634  # exp(dt A) = exp2(dt A log2 e)
        if HAS_D:
            Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        else:
            bias = tl.zeros([BLOCK_D], dtype=tl.float32)

        u_base = u_ptr + pid_b * s_u_b
        dt_base = delta_ptr + pid_b * s_dt_b
        z_base = z_ptr + pid_b * s_z_b
        o_base = out_ptr + pid_b * s_o_b
        B_base = B_ptr + pid_b * s_B_b
        C_base = C_ptr + pid_b * s_C_b

        h = tl.zeros([BLOCK_D, NP], dtype=tl.float32)
        for c in range(0, tl.cdiv(L, CHUNK)):
            s = c * CHUNK + offs_j  # position in processing order
            mask_t = s < L
            if REVERSE:
                t = L - 1 - s
            else:
                t = s
            m2 = _dt2_and(mask_d, mask_t, ORDER)
            mtn = mask_t[:, None] & mask_n[None, :]
            u = _load_dt_tile(u_base, offs_d, t, s_u_d, s_u_l, m2, ORDER)
            xd = _load_dt_tile(dt_base, offs_d, t, s_dt_d, s_dt_l, m2, ORDER)
            xd, dt = _dt_from_delta(xd, m2, HAS_BIAS, SOFTPLUS, bias, ORDER)
            Bt = _load_tn(B_base, t, offs_n, s_B_n, s_B_l, mtn)
            Ct = _load_tn(C_base, t, offs_n, s_C_n, s_C_l, mtn)
            bx, hs = _chunk_states(dt, u, Bt, A2, h, offs_j, ORDER)
            y = tl.sum(hs * _tn3(Ct, ORDER), axis=2)
            if HAS_D:
                y += _d_col(Dv, ORDER) * u
            if HAS_Z:
                zz = _load_dt_tile(z_base, offs_d, t, s_z_d, s_z_l, m2, ORDER)
                y = y * (zz * tl.sigmoid(zz))
            _store_dt_tile(o_base, offs_d, t, s_o_d, s_o_l, y, m2, ORDER)
            h = _last_state(hs, offs_j, CHUNK, ORDER)

    @triton.jit(do_not_specialize=["dim", "L", "dstate", "nchunks", "batch"])
    def _scan_bwd_kernel(
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
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
        SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr,
        BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, NP: tl.constexpr, ORDER: tl.constexpr,
    ):
        """Gradients. Output buffers (all contiguous):
        du, ddelta, dz [batch, dim, L] (input dtypes); dA [batch, dim, dstate], dD, dbias [batch, dim] and
        dB, dC [n_dblocks, batch, dstate, L] float32 partial sums; ckpt [batch, nchunks, dim, NP] scratch."""
        pid_b = tl.program_id(0).to(tl.int64)
        pid_d = tl.program_id(1)
        offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        offs_n = tl.arange(0, NP)
        offs_j = tl.arange(0, CHUNK)
        mask_d = offs_d < dim
        mask_n = offs_n < dstate
        mask_dn = mask_d[:, None] & mask_n[None, :]

        A = tl.load(A_ptr + offs_d[:, None] * s_A_d + offs_n[None, :] * s_A_n, mask=mask_dn, other=0.0).to(tl.float32)
        A2 = A * 1.4426950408889634
        if HAS_D:
            Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        else:
            bias = tl.zeros([BLOCK_D], dtype=tl.float32)

        u_base = u_ptr + pid_b * s_u_b
        dt_base = delta_ptr + pid_b * s_dt_b
        z_base = z_ptr + pid_b * s_z_b
        g_base = dout_ptr + pid_b * s_g_b
        B_base = B_ptr + pid_b * s_B_b
        C_base = C_ptr + pid_b * s_C_b
        # contiguous [batch, dim, L] gradient outputs
        io = pid_b * dim * L
        du_base = du_ptr + io
        ddelta_base = ddelta_ptr + io
        dz_base = dz_ptr + io
        ck_base = ckpt_ptr + pid_b * nchunks * dim * NP + offs_d[:, None] * NP + offs_n[None, :]
        # partial dB / dC of this channel block: [n_dblocks, batch, dstate, L]
        part_off = (pid_d * batch + pid_b) * dstate * L

        # ---- pass 1: states at chunk starts
        h = tl.zeros([BLOCK_D, NP], dtype=tl.float32)
        for c in range(0, nchunks - 1):
            tl.store(ck_base + c * dim * NP, h, mask=mask_dn)
            s = c * CHUNK + offs_j
            mask_t = s < L
            if REVERSE:
                t = L - 1 - s
            else:
                t = s
            m2 = _dt2_and(mask_d, mask_t, ORDER)
            mtn = mask_t[:, None] & mask_n[None, :]
            u = _load_dt_tile(u_base, offs_d, t, s_u_d, s_u_l, m2, ORDER)
            xd = _load_dt_tile(dt_base, offs_d, t, s_dt_d, s_dt_l, m2, ORDER)
            xd, dt = _dt_from_delta(xd, m2, HAS_BIAS, SOFTPLUS, bias, ORDER)
            Bt = _load_tn(B_base, t, offs_n, s_B_n, s_B_l, mtn)
            bx, hs = _chunk_states(dt, u, Bt, A2, h, offs_j, ORDER)
            h = _last_state(hs, offs_j, CHUNK, ORDER)
        tl.store(ck_base + (nchunks - 1) * dim * NP, h, mask=mask_dn)
        tl.debug_barrier()  # the checkpoints written above are read back by other threads of this program

        # ---- pass 2: chunks in reverse processing order
        G = tl.zeros([BLOCK_D, NP], dtype=tl.float32)  # adjoint g at the first token of the next chunk
        dA_acc = tl.zeros([BLOCK_D, NP], dtype=tl.float32)
        dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        db_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        for ci in range(0, nchunks):
            c = nchunks - 1 - ci
            s = c * CHUNK + offs_j
            mask_t = s < L
            s1 = s + 1
            mask_t1 = s1 < L
            if REVERSE:
                t = L - 1 - s
                t1 = L - 1 - s1
            else:
                t = s
                t1 = s1
            m2 = _dt2_and(mask_d, mask_t, ORDER)
            mtn = mask_t[:, None] & mask_n[None, :]
            u = _load_dt_tile(u_base, offs_d, t, s_u_d, s_u_l, m2, ORDER)
            xd = _load_dt_tile(dt_base, offs_d, t, s_dt_d, s_dt_l, m2, ORDER)
            xd, dt = _dt_from_delta(xd, m2, HAS_BIAS, SOFTPLUS, bias, ORDER)
            Bt = _load_tn(B_base, t, offs_n, s_B_n, s_B_l, mtn)
            Ct = _load_tn(C_base, t, offs_n, s_C_n, s_C_l, mtn)
            # decay of the following token (a_{t+1}), for the adjoint recurrence
            m21 = _dt2_and(mask_d, mask_t1, ORDER)
            xd1 = _load_dt_tile(dt_base, offs_d, t1, s_dt_d, s_dt_l, m21, ORDER)
            xd1, dt1 = _dt_from_delta(xd1, m21, HAS_BIAS, SOFTPLUS, bias, ORDER)
            a1 = tl.exp2(dt1[:, :, None] * _dn3(A2, ORDER))

            h0 = tl.load(ck_base + c * dim * NP, mask=mask_dn, other=0.0, cache_modifier=".cg")
            bx, hs = _chunk_states(dt, u, Bt, A2, h0, offs_j, ORDER)

            dout = _load_dt_tile(g_base, offs_d, t, s_g_d, s_g_l, m2, ORDER)
            y = tl.sum(hs * _tn3(Ct, ORDER), axis=2)
            if HAS_D:
                y += _d_col(Dv, ORDER) * u
            if HAS_Z:
                zz = _load_dt_tile(z_base, offs_d, t, s_z_d, s_z_l, m2, ORDER)
                sz = tl.sigmoid(zz)
                dy = dout * zz * sz
                dz = dout * y * sz * (1.0 + zz * (1.0 - sz))
                _store_dt_tile(dz_base, offs_d, t, L, 1, dz, m2, ORDER)
            else:
                dy = dout

            # adjoint: g_t = C_t dy_t + a_{t+1} g_{t+1}, reverse scan with the next chunk's g carried in
            cg = dy[:, :, None] * _tn3(Ct, ORDER)
            cg = tl.where(_j3(offs_j, ORDER) == CHUNK - 1, cg + a1 * _dn3(G, ORDER), cg)
            g = _scan_t(a1, cg, ORDER, True)

            dtu = dt * u
            w = g * (hs - bx)  # g_t * a_t * h_{t-1}
            gB = tl.sum(g * _tn3(Bt, ORDER), axis=2)
            ddt = u * gB + tl.sum(w * _dn3(A, ORDER), axis=2)
            dA_acc += _sum_t3(w * dt[:, :, None], ORDER)
            du = dt * gB
            if HAS_D:
                du += _d_col(Dv, ORDER) * dy
                dD_acc += _sum_t2(dy * u, ORDER)
            if SOFTPLUS:
                ddt = ddt * tl.sigmoid(xd)
            ddt = tl.where(m2, ddt, 0.0)
            db_acc += _sum_t2(ddt, ORDER)
            _store_dt_tile(du_base, offs_d, t, L, 1, du, m2, ORDER)
            _store_dt_tile(ddelta_base, offs_d, t, L, 1, ddt, m2, ORDER)

            dC_part = _sum_d3(dy[:, :, None] * hs, ORDER)  # [CHUNK, NP]
            dB_part = _sum_d3(g * dtu[:, :, None], ORDER)
            p_off = part_off + offs_n[None, :] * L + t[:, None]
            tl.store(dB_ptr + p_off, dB_part, mask=mtn)
            tl.store(dC_ptr + p_off, dC_part, mask=mtn)

            G = _sum_t3(tl.where(_j3(offs_j, ORDER) == 0, g, 0.0), ORDER)

        tl.store(dA_ptr + pid_b * dim * dstate + offs_d[:, None] * dstate + offs_n[None, :], dA_acc, mask=mask_dn)
        tl.store(dD_ptr + pid_b * dim + offs_d, dD_acc, mask=mask_d)
        tl.store(dbias_ptr + pid_b * dim + offs_d, db_acc, mask=mask_d)


# ------------------------------------------------------------------------------------------ launchers
def _np(dstate: int) -> int:
    return max(2, triton.next_power_of_2(dstate))


def _require_runnable(u: Tensor) -> None:
    if not _HAS_TRITON:
        raise RuntimeError("selective_scan_triton needs triton")
    if not u.is_cuda and not _interpreting():
        raise RuntimeError("selective_scan_triton needs CUDA tensors (or TRITON_INTERPRET=1)")


def _fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse) -> Tensor:
    _require_runnable(u)
    batch, dim, L = u.shape
    dstate = A.shape[1]
    out = _alloc((batch, dim, L), u.dtype, u.device)
    if out.numel() == 0:
        return out
    cfg = FWD_CONFIG
    bd, chunk = cfg["BLOCK_D"], cfg["CHUNK"]
    zz = z if z is not None else u
    grid = (batch, triton.cdiv(dim, bd))
    with _device_guard(u):
        _scan_fwd_kernel[grid](
            u, delta, A, B, C,
            D if D is not None else A, zz, delta_bias if delta_bias is not None else A, out,
            dim, L, dstate,
            *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *zz.stride(), *out.stride(),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=bool(delta_softplus), REVERSE=bool(reverse),
            BLOCK_D=bd, CHUNK=chunk, NP=_np(dstate), ORDER=cfg.get("ORDER", 0), num_warps=cfg["num_warps"],
            num_stages=1,
        )
    return out


def _bwd(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
    _require_runnable(u)
    batch, dim, L = u.shape
    dstate = A.shape[1]
    dev = u.device
    cfg = BWD_CONFIG
    bd, chunk = cfg["BLOCK_D"], cfg["CHUNK"]
    NP = _np(dstate)
    n_dblk = triton.cdiv(dim, bd)
    nchunks = triton.cdiv(L, chunk)
    du = _alloc((batch, dim, L), u.dtype, dev)
    ddelta = _alloc((batch, dim, L), delta.dtype, dev)
    dz = _alloc((batch, dim, L), z.dtype, dev) if z is not None else torch.empty(0, dtype=u.dtype, device=dev)
    if batch * dim * L == 0:
        du.zero_(), ddelta.zero_(), dz.zero_()
        return (du, ddelta, torch.zeros_like(A), torch.zeros_like(B), torch.zeros_like(C),
                torch.zeros(dim, dtype=D.dtype if D is not None else torch.float32, device=dev), dz,
                torch.zeros(dim, dtype=delta_bias.dtype if delta_bias is not None else torch.float32, device=dev))
    ckpt = _alloc((batch, nchunks, dim, NP), torch.float32, dev)
    dA_p = _alloc((batch, dim, dstate), torch.float32, dev)
    dB_p = _alloc((n_dblk, batch, dstate, L), torch.float32, dev)
    dC_p = _alloc((n_dblk, batch, dstate, L), torch.float32, dev)
    dD_p = _alloc((batch, dim), torch.float32, dev)
    dbias_p = _alloc((batch, dim), torch.float32, dev)
    zz = z if z is not None else u
    grid = (batch, n_dblk)
    with _device_guard(u):
        _scan_bwd_kernel[grid](
            u, delta, A, B, C,
            D if D is not None else A, zz, delta_bias if delta_bias is not None else A, dout,
            ckpt, du, ddelta, dz if z is not None else du, dA_p, dB_p, dC_p, dD_p, dbias_p,
            batch, dim, L, dstate, nchunks,
            *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *zz.stride(), *dout.stride(),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=bool(delta_softplus), REVERSE=bool(reverse),
            BLOCK_D=bd, CHUNK=chunk, NP=NP, ORDER=cfg.get("ORDER", 0), num_warps=cfg["num_warps"], num_stages=1,
        )
    dA = dA_p.sum(0).to(A.dtype)
    dB = dB_p.sum(0).to(B.dtype)
    dC = dC_p.sum(0).to(C.dtype)
    dD = dD_p.sum(0).to(D.dtype if D is not None else torch.float32)
    dbias = dbias_p.sum(0).to(delta_bias.dtype if delta_bias is not None else torch.float32)
    return du, ddelta, dA, dB, dC, dD, dz, dbias


# --------------------------------------------------------------------------------------- custom ops
@torch.library.custom_op("rmeeto::selective_scan", mutates_args=())
def _selective_scan_op(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
    delta_bias: Optional[Tensor], delta_softplus: bool, reverse: bool,
) -> Tensor:
    return _fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)


@_selective_scan_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
    return torch.empty(u.shape, dtype=u.dtype, device=u.device)


@torch.library.custom_op("rmeeto::selective_scan_bwd", mutates_args=())
def _selective_scan_bwd_op(
    dout: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
    z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool, reverse: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias); dD / ddelta_bias are [dim] even when D /
    delta_bias are absent, dz is an empty tensor when z is absent."""
    return _bwd(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)


@_selective_scan_bwd_op.register_fake
def _(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
    batch, dim, L = u.shape
    dev = u.device
    return (
        torch.empty(u.shape, dtype=u.dtype, device=dev),
        torch.empty(u.shape, dtype=delta.dtype, device=dev),
        torch.empty(A.shape, dtype=A.dtype, device=dev),
        torch.empty(B.shape, dtype=B.dtype, device=dev),
        torch.empty(C.shape, dtype=C.dtype, device=dev),
        torch.empty((dim,), dtype=D.dtype if D is not None else torch.float32, device=dev),
        torch.empty(u.shape, dtype=z.dtype, device=dev) if z is not None else torch.empty(0, dtype=u.dtype, device=dev),
        torch.empty((dim,), dtype=delta_bias.dtype if delta_bias is not None else torch.float32, device=dev),
    )


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
    ctx.delta_softplus = delta_softplus
    ctx.reverse = reverse


def _backward(ctx, dout):
    u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
    du, ddelta, dA, dB, dC, dD, dz, dbias = _selective_scan_bwd_op(
        dout, u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, ctx.reverse
    )
    return (
        du, ddelta, dA, dB, dC,
        dD if D is not None else None,
        dz if z is not None else None,
        dbias if delta_bias is not None else None,
        None, None,
    )


_selective_scan_op.register_autograd(_backward, setup_context=_setup_context)


def selective_scan_triton(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, reverse=False
) -> Tensor:
    """Fused Triton selective scan (forward and backward). Same signature and semantics as
    :func:`rmeeto.ops.selective_scan.selective_scan_ref`."""
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    return _selective_scan_op(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), bool(reverse))

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
h_t = a_t * h_{t-1} + b_t is evaluated as a parallel associative scan over a [BLOCK_D, CHUNK, dstate]
register tile (the carried-in state is folded into the first element), so every token's state of the
chunk is available at once: the outputs y_t = C_t . h_t are one reduction over dstate and the tile loads
and stores are whole [BLOCK_D, CHUNK] blocks.

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

__all__ = ["is_available", "selective_scan_triton", "FWD_CONFIG", "BWD_CONFIG"]

# Tile configuration: the best of a small sweep on an H200 for Vim-S shapes (benchmarks/bench_scan_gpu.py
# sweeps and overrides these).
FWD_CONFIG = {"BLOCK_D": 4, "CHUNK": 32, "num_warps": 4}
BWD_CONFIG = {"BLOCK_D": 4, "CHUNK": 32, "num_warps": 4}

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

    @triton.jit
    def _load_step_inputs(
        u_base, dt_base, B_base, C_base, t, mask_t, mask_d, mask_n, bias, offs_n,
        s_u_l, s_dt_l, s_B_n, s_B_l, s_C_n, s_C_l,
        HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    ):
        """Loads one chunk: u, delta (+bias, pre-softplus), dt [BLOCK_D, CHUNK]; B, C [CHUNK, NP] in fp32.
        Invalid positions get dt = 0 (so exp(dt A) = 1 and dt B u = 0: the identity step)."""
        m2 = mask_d[:, None] & mask_t[None, :]
        u = tl.load(u_base + t[None, :] * s_u_l, mask=m2, other=0.0).to(tl.float32)
        xd = tl.load(dt_base + t[None, :] * s_dt_l, mask=m2, other=0.0).to(tl.float32)
        if HAS_BIAS:
            xd = xd + bias[:, None]
        if SOFTPLUS:
            dt = _softplus(xd)
        else:
            dt = xd
        dt = tl.where(m2, dt, 0.0)
        mtn = mask_t[:, None] & mask_n[None, :]
        Bt = tl.load(B_base + t[:, None] * s_B_l + offs_n[None, :] * s_B_n, mask=mtn, other=0.0).to(tl.float32)
        Ct = tl.load(C_base + t[:, None] * s_C_l + offs_n[None, :] * s_C_n, mask=mtn, other=0.0).to(tl.float32)
        return u, xd, dt, Bt, Ct

    @triton.jit
    def _chunk_states(dt, u, Bt, A2, h, offs_j):
        """All states of one chunk, [BLOCK_D, CHUNK, NP], starting from state h [BLOCK_D, NP].
        Returns (a, bx, hs): the per-step decay exp(dt A), input dt B u, and the states."""
        a = tl.exp2(dt[:, :, None] * A2[:, None, :])
        bx = (dt * u)[:, :, None] * Bt[None, :, :]
        first = offs_j[None, :, None] == 0
        bxc = tl.where(first, bx + a * h[:, None, :], bx)
        _, hs = tl.associative_scan((a, bxc), axis=1, combine_fn=_lin_combine)
        return a, bx, hs

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
        BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, NP: tl.constexpr,
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

        u_base = u_ptr + pid_b * s_u_b + offs_d[:, None] * s_u_d
        dt_base = delta_ptr + pid_b * s_dt_b + offs_d[:, None] * s_dt_d
        z_base = z_ptr + pid_b * s_z_b + offs_d[:, None] * s_z_d
        o_base = out_ptr + pid_b * s_o_b + offs_d[:, None] * s_o_d
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
            u, xd, dt, Bt, Ct = _load_step_inputs(
                u_base, dt_base, B_base, C_base, t, mask_t, mask_d, mask_n, bias, offs_n,
                s_u_l, s_dt_l, s_B_n, s_B_l, s_C_n, s_C_l, HAS_BIAS, SOFTPLUS,
            )
            a, bx, hs = _chunk_states(dt, u, Bt, A2, h, offs_j)
            y = tl.sum(hs * Ct[None, :, :], axis=2)
            if HAS_D:
                y += Dv[:, None] * u
            m2 = mask_d[:, None] & mask_t[None, :]
            if HAS_Z:
                zz = tl.load(z_base + t[None, :] * s_z_l, mask=m2, other=0.0).to(tl.float32)
                y = y * (zz * tl.sigmoid(zz))
            tl.store(o_base + t[None, :] * s_o_l, y.to(out_ptr.dtype.element_ty), mask=m2)
            h = tl.sum(tl.where(offs_j[None, :, None] == CHUNK - 1, hs, 0.0), axis=1)

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
        BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, NP: tl.constexpr,
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

        u_base = u_ptr + pid_b * s_u_b + offs_d[:, None] * s_u_d
        dt_base = delta_ptr + pid_b * s_dt_b + offs_d[:, None] * s_dt_d
        z_base = z_ptr + pid_b * s_z_b + offs_d[:, None] * s_z_d
        g_base = dout_ptr + pid_b * s_g_b + offs_d[:, None] * s_g_d
        B_base = B_ptr + pid_b * s_B_b
        C_base = C_ptr + pid_b * s_C_b
        # contiguous [batch, dim, L] gradient outputs
        io_base = pid_b * dim * L + offs_d[:, None] * L
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
            u, xd, dt, Bt, Ct = _load_step_inputs(
                u_base, dt_base, B_base, C_base, t, mask_t, mask_d, mask_n, bias, offs_n,
                s_u_l, s_dt_l, s_B_n, s_B_l, s_C_n, s_C_l, HAS_BIAS, SOFTPLUS,
            )
            a, bx, hs = _chunk_states(dt, u, Bt, A2, h, offs_j)
            h = tl.sum(tl.where(offs_j[None, :, None] == CHUNK - 1, hs, 0.0), axis=1)
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
            m2 = mask_d[:, None] & mask_t[None, :]
            u, xd, dt, Bt, Ct = _load_step_inputs(
                u_base, dt_base, B_base, C_base, t, mask_t, mask_d, mask_n, bias, offs_n,
                s_u_l, s_dt_l, s_B_n, s_B_l, s_C_n, s_C_l, HAS_BIAS, SOFTPLUS,
            )
            # decay of the following token (a_{t+1}), for the adjoint recurrence
            m21 = mask_d[:, None] & mask_t1[None, :]
            xd1 = tl.load(dt_base + t1[None, :] * s_dt_l, mask=m21, other=0.0).to(tl.float32)
            if HAS_BIAS:
                xd1 = xd1 + bias[:, None]
            if SOFTPLUS:
                dt1 = _softplus(xd1)
            else:
                dt1 = xd1
            dt1 = tl.where(m21, dt1, 0.0)
            a1 = tl.exp2(dt1[:, :, None] * A2[:, None, :])

            h0 = tl.load(ck_base + c * dim * NP, mask=mask_dn, other=0.0, cache_modifier=".cg")
            a, bx, hs = _chunk_states(dt, u, Bt, A2, h0, offs_j)

            dout = tl.load(g_base + t[None, :] * s_g_l, mask=m2, other=0.0).to(tl.float32)
            y = tl.sum(hs * Ct[None, :, :], axis=2)
            if HAS_D:
                y += Dv[:, None] * u
            if HAS_Z:
                zz = tl.load(z_base + t[None, :] * s_z_l, mask=m2, other=0.0).to(tl.float32)
                sz = tl.sigmoid(zz)
                dy = dout * zz * sz
                dz = dout * y * sz * (1.0 + zz * (1.0 - sz))
                tl.store(dz_ptr + io_base + t[None, :], dz.to(dz_ptr.dtype.element_ty), mask=m2)
            else:
                dy = dout

            # adjoint: g_t = C_t dy_t + a_{t+1} g_{t+1}, reverse scan with the next chunk's g carried in
            cg = dy[:, :, None] * Ct[None, :, :]
            last = offs_j[None, :, None] == CHUNK - 1
            cg = tl.where(last, cg + a1 * G[:, None, :], cg)
            _, g = tl.associative_scan((a1, cg), axis=1, combine_fn=_lin_combine, reverse=True)

            dtu = dt * u
            w = g * (hs - bx)  # g_t * a_t * h_{t-1}
            gB = tl.sum(g * Bt[None, :, :], axis=2)
            ddt = u * gB + tl.sum(w * A[:, None, :], axis=2)
            dA_acc += tl.sum(w * dt[:, :, None], axis=1)
            du = dt * gB
            if HAS_D:
                du += Dv[:, None] * dy
                dD_acc += tl.sum(dy * u, axis=1)
            if SOFTPLUS:
                ddt = ddt * tl.sigmoid(xd)
            ddt = tl.where(m2, ddt, 0.0)
            db_acc += tl.sum(ddt, axis=1)
            tl.store(du_ptr + io_base + t[None, :], du.to(du_ptr.dtype.element_ty), mask=m2)
            tl.store(ddelta_ptr + io_base + t[None, :], ddt.to(ddelta_ptr.dtype.element_ty), mask=m2)

            dC_part = tl.sum(dy[:, :, None] * hs, axis=0)  # [CHUNK, NP]
            dB_part = tl.sum(g * dtu[:, :, None], axis=0)
            mtn = mask_t[:, None] & mask_n[None, :]
            p_off = part_off + offs_n[None, :] * L + t[:, None]
            tl.store(dB_ptr + p_off, dB_part, mask=mtn)
            tl.store(dC_ptr + p_off, dC_part, mask=mtn)

            G = tl.sum(tl.where(offs_j[None, :, None] == 0, g, 0.0), axis=1)

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
            BLOCK_D=bd, CHUNK=chunk, NP=_np(dstate), num_warps=cfg["num_warps"], num_stages=1,
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
            BLOCK_D=bd, CHUNK=chunk, NP=NP, num_warps=cfg["num_warps"], num_stages=1,
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

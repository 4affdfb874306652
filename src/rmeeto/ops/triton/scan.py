"""Fused selective scan in Triton: the forward kernels, and the PyTorch custom ops over forward and backward.

Semantics and shapes are those of :mod:`rmeeto.ops.selective_scan` (see its docstring):

    u, delta, z : [batch, dim, length]  (fp32 / bf16 / fp16, any strides)
    A           : [dim, dstate]         B, C : [batch, dstate, length] (any strides)
    D, delta_bias : [dim]               out  : [batch, dim, length] in u's dtype, laid out like u

Everything is computed in float32: softplus(delta + delta_bias), the discretisation exp(dt * A) and
dt * B * u, the recurrence, the C contraction, the D skip term and the SiLU(z) gate are fused in one pass.
``reverse=True`` runs the recurrence from the last token to the first by reading memory backwards (no
flipped copies).

Kernel layout. One program per (batch element, block of BLOCK_D channels); each thread owns its channel(s)
and the channel's whole state h[dstate] in registers (as even / odd halves), so the contraction with C and
every other sum over dstate is a chain of in-thread adds: no shuffles and no shared memory in the forward.
Time advances in chunks of CHUNK tokens: u, delta and z of a chunk are loaded into [CHUNK, BLOCK_D] tiles
(the chunk axis also inside each thread; the forward loads them one token row at a time, see the layout note
above the kernels), then the chunk's tokens are stepped through one by one in an unrolled loop (h = exp2(dt A log2e) h + dt u B; y = C . h). B and C, shared by all channels, are read per
token as 32-bit pairs when their layout allows (PACK). With Vim's channels-last views every tile load and
store is coalesced across the warp, and the output (and the gradients) come back channels-last.

Backward (nothing but the inputs is saved by the forward; its kernels are in :mod:`rmeeto.ops.triton.scan_bwd`):
  1. recompute the forward, storing h at every chunk start (a [batch, nchunks, dstate, dim] float32 scratch);
  2. walk the chunks backwards: recompute the chunk's states from its checkpoint (kept in registers), then
     step back through the chunk with the adjoint g_t = dL/dh_t = C_t dy_t + a_{t+1} g_{t+1}, and from
     (h_t, g_t) every gradient:
        w_t    = g_t * (h_t - dt_t u_t B_t)          (= g_t * a_t * h_{t-1}, no division, no shifted states)
        ddt_t  = u_t * sum_n g_t B_t + sum_n w_t A   dA += sum_t dt_t w_t
        du_t   = dt_t * sum_n g_t B_t + D dy_t       dB_t = sum_d g_t dt_t u_t   dC_t = sum_d dy_t h_t
     dB and dC (shared by all channels) are sums across the channel lanes (a reduce-scatter of warp shuffles),
     written per warp into a partial buffer and summed afterwards (deterministic, no atomics); dA, dD and
     d(delta_bias) likewise per batch element.
Each of the two computations exists once, as a body function for one program: the forward's is
:func:`_scan_fwd_body` here, the backward's ``_scan_bwd_body`` in :mod:`rmeeto.ops.triton.scan_bwd`, which builds
on this module's jit helpers and registers its launchers for :func:`_bwd` / :func:`_bwd_bidir`, the one entry of
the custom ops and autograd functions into the backward. The single-direction forward kernel calls its body once,
the two-direction one (both scan directions of a Vim mixer in one launch) once per direction, in the two branches
of an ``if`` on the direction, so each branch is compiled with its direction as a constant, like a
single-direction kernel (the two-direction backward calls its body once, on the direction's base pointers and
token strides chosen at run time: see scan_bwd's docstring).
benchmarks/compile_scan.py compiles the kernels for sm_90 without a GPU and reports registers, spills and
instruction counts, which is how the tile configurations below were narrowed down.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from rmeeto.ops.triton._inductor import library_op
from rmeeto.ops.triton._launch import cdiv, launch, next_pow2, pdl_meta
from rmeeto.ops.triton._pdl import follow_previous
from rmeeto.ops._checks import check_scan_shapes

Tensor = torch.Tensor

try:  # Triton is optional: without it the module imports but is_available() is False
    import triton
    import triton.language as tl

    _HAS_TRITON = True
except Exception:  # ImportError, or a broken install
    triton = None
    tl = None
    _HAS_TRITON = False

__all__ = [
    "is_available", "selective_scan_triton", "selective_scan_bidir_triton", "FWD_CONFIG", "CANDIDATE_FWD",
]

# Tile configuration of the forward (the backward's is scan_bwd.BWD_XLANE_CONFIG): BLOCK_D channels per program
# (one or more per thread: BLOCK_D / (32 * num_warps)), CHUNK tokens loaded per step of the time loop; ``prefetch``
# (off when absent) issues the next chunk's loads of u / delta / z before each step's math, where the launchers
# allow it (:func:`_prefetches`: 16-bit vector B / C rows only). benchmarks/tuned_bench.py sweeps CANDIDATE_FWD and
# overrides FWD_CONFIG; tests/ops/test_gpu_scan.py checks every candidate for correctness.
# FWD_CONFIG, measured on an H200 (thirteenth session, benchmarks/tuned_bench.py: two-direction forward, batch 128,
# 197 tokens, fp16, after the softplus / C . h instruction cuts), us at 384 / 768 / 1536 channels (Vim-Ti/S/B):
#   (64, 2, 2) + prefetch 193.8 / 356.2 / 665.5;  without prefetch 212.9 / 400.0 / 715.5;
#   (128, 4, 4) 187.4 / 352.8 / 672.6 (the fastest of two widths, but Vim-Ti graphed lost 11% with it, in a
#   run not repeated);  (64, 2, 1) 195.3 / 365.5 / 648.0.
# The prefetching (64, 2, 2) is within 4% of the fastest tile at every width and keeps the program shape every
# model was measured with before.
FWD_CONFIG = {"BLOCK_D": 64, "CHUNK": 2, "num_warps": 2, "prefetch": True}
_KEYS = ("BLOCK_D", "CHUNK", "num_warps")
# (64, 2, 2): one channel per lane like (32, 2, 1) (the same per-thread code, no shuffles), in two-warp programs;
# with prefetch 72 registers instead of 64.
CANDIDATE_FWD = [dict(zip(_KEYS, c)) for c in [
    (32, 4, 1), (32, 2, 1), (32, 8, 1), (64, 4, 2), (64, 2, 1), (64, 4, 1), (128, 4, 4), (64, 2, 2),
]] + [dict(zip(_KEYS, c), prefetch=True) for c in [(64, 2, 2), (32, 2, 1), (128, 2, 4), (64, 4, 2), (64, 1, 2)]]

# Read B and C with as few loads as their layout allows (see _bc_mode); tests turn it off to cover the
# one-element path on the same inputs.
_PACK_BC = True

# Tests set this to fill every buffer the op allocates with NaN, so an element the kernels forget to write
# shows up in the result instead of silently holding stale memory.
_POISON = False


def is_available() -> bool:
    """True when Triton imports and a CUDA device is present."""
    return _HAS_TRITON and torch.cuda.is_available()


# read once: Triton itself reads it only when imported, so it cannot change meaningfully later
_INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _interpreting() -> bool:
    return _INTERPRETING


def _alloc(shape, dtype, device) -> Tensor:
    if _POISON:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


# ------------------------------------------------------------------------------------------- kernels
# Layout. State tiles are [NP, BLOCK_D] (dstate x channels) with the channel axis last, so Triton spreads the
# channels over lanes and warps and keeps all dstate entries of a channel inside one thread: the sums over
# dstate (y = C . h, gB, ...) are in-thread adds. Token tiles are [CHUNK, BLOCK_D] with the CHUNK axis inside
# each thread too; _pick / _put read and write one token's row of such a tile with selects whose condition is
# a compile-time constant per register, so they cost nothing after LLVM folds them (x + -0.0 == x exactly).
# Strides of the [batch, dim, L] tensors are not specialised on purpose: a known unit stride would make
# Triton vectorise the loads along channels and move the chunk axis across lanes.
# Triton 3.6 (the GPU machine's) lays out a 2-D load or store whose strides are all unknown (the token tiles,
# A [NP/2, BLOCK_D]) with both axes equally contiguous, and its coalescing pass then spreads the chunk or dstate
# axis over lanes; the state tiles inherit that layout and the kernel pays shuffles and shared memory to bring
# it back in-thread (the forward compiled to 2 KB of shared memory and 32 shuffles at BLOCK_D=64, CHUNK=2).
# The forward body therefore does every such access one token (or dstate) row at a time, as a [1, BLOCK_D]
# row (_load_row, _channel_consts_rows, per-row stores): a [1, BLOCK_D] row has the default layout of the
# [NP/2, BLOCK_D] state tiles (a 1-D [BLOCK_D] vector does not when a thread holds two channels: it holds
# channels 2l, 2l+1 where the tiles' slice holds l, l + 32, and converting costs shuffles). Triton 3.6 and 3.8
# then compile the forward alike: no shared memory, no spills, the same shuffles (0 with one channel per lane).
_SCAN_NOSPEC = [
    "dim", "L", "s_u_b", "s_u_d", "s_u_l", "s_dt_b", "s_dt_d", "s_dt_l", "s_z_b", "s_z_d", "s_z_l",
    "s_o_b", "s_o_d", "s_o_l", "s_g_b", "s_g_d", "s_g_l", "s_B_b", "s_B_l", "s_C_b", "s_C_l",
    "s_A_d", "s_A_n", "nchunks", "batch",
]

if _HAS_TRITON:
    @triton.jit
    def _softplus(x):
        """log(1 + e^x) = max(x, 0) + log1p(e), e = exp(-|x|) in (0, 1], with log1p(e) = 2 atanh(s) for
        s = e / (2 + e) in (0, 1/3] and atanh(s) / s = sum_k s^2k / (2k + 1), summed to k = 6 (the next term is
        below 2^-26 of the sum). One exp2 and one division where log1p through a library log costs ~40
        instructions; about as accurate (a few float32 ulp), and exact at both ends: x for large x, e^x -> 0."""
        e = tl.exp2(tl.abs(x) * -1.4426950408889634)
        s = e / (2.0 + e)
        s2 = s * s
        p = s2 * 0.07692307692307693 + 0.09090909090909091
        p = p * s2 + 0.1111111111111111
        p = p * s2 + 0.14285714285714285
        p = p * s2 + 0.2
        p = p * s2 + 0.3333333333333333
        p = p * s2 + 1.0
        return tl.maximum(x, 0.0) + (s + s) * p

    @triton.jit
    def _sigmoid(x):
        """1 / (1 + e^-x) through exp2 (the exp's flush of subnormals spares tl.sigmoid's range fix-ups)."""
        return 1.0 / (1.0 + tl.exp2(x * -1.4426950408889634))

    @triton.jit
    def _dot_state(he, ho, Ce, Co, NP: tl.constexpr):
        """C . h over the dstate axis of the state halves he, ho [NP/2, BLOCK_D] (Ce, Co: [NP/2]) -> [BLOCK_D]:
        two chains of in-thread multiply-adds (even entries, odd entries) joined at the end, 17 instructions a
        channel where tl.sum's pairwise tree of products costs ~24. Picking row k (_pick) is free: the selects
        have constant conditions per register and x + -0.0 == x."""
        pe = he * Ce[:, None]
        po = ho * Co[:, None]
        rows = tl.arange(0, NP // 2)
        ye = _pick(pe, rows, 0)
        yo = _pick(po, rows, 0)
        for k in tl.static_range(1, NP // 2):
            ye += _pick(pe, rows, k)
            yo += _pick(po, rows, k)
        return ye + yo

    @triton.jit
    def _neg_zero(like):
        """-0.0 in float32 with the shape of ``like``. A literal -0.0 reaches the compiled code as +0.0, and
        x + 0.0 is not x (it turns -0.0 into +0.0), so LLVM keeps every such add a pick leaves behind."""
        return tl.full(like.shape, -2147483648, tl.int32).to(tl.float32, bitcast=True)

    @triton.jit
    def _pick(tile, offs_j, j):
        """Row j of a [CHUNK, BLOCK_D] tile -> [BLOCK_D]."""
        return tl.sum(tl.where(offs_j[:, None] == j, tile, _neg_zero(tile)), axis=0)

    @triton.jit
    def _put(tile, offs_j, j, row):
        """Tile with row j replaced by row ([BLOCK_D])."""
        return tl.where(offs_j[:, None] == j, row[None, :], tile)

    @triton.jit
    def _pick3(tile, offs_j, j):
        """[CHUNK, NP, BLOCK_D] -> [NP, BLOCK_D] at position j."""
        return tl.sum(tl.where(offs_j[:, None, None] == j, tile, _neg_zero(tile)), axis=0)

    @triton.jit
    def _load_pair(base, tj, s_l, s_n, offs_h, dstate, vj, PACK: tl.constexpr, CLAMP: tl.constexpr):
        """Entries 2k and 2k+1 (k < NP/2) of token tj's dstate vector of B or C as two float32 [NP/2] vectors.
        B and C are broadcast to every thread, so their loads are made as few as the layout allows (PACK, chosen
        by the launcher, :func:`_bc_mode`):
          3: float32 rows of exactly NP values, 16-byte aligned: one vector load of the row, split in pairs;
          2: 16-bit rows of exactly NP values, 16-byte aligned: the row as 32-bit words in one vector load;
          1: 16-bit, even offsets and strides: one 32-bit load per pair;
          0: one load per entry.
        CLAMP (modes 2 and 3, the forward only): a token past the sequence reads token 0's row instead of being
        masked to zero, which spares the zero-fill of every masked load. The forward steps such a token with
        dt = 0 (h unchanged whatever B is, for finite B) and stores nothing for it, so no output can see it; the
        backward keeps the masks (there a non-finite B or C at token 0 must not reach the other tokens)."""
        if PACK >= 2:
            if CLAMP:
                row = base + tl.where(vj, tj, 0) * s_l
            else:
                row = base + tj * s_l
            if PACK == 3:
                ptr = tl.multiple_of(row, 16) + tl.arange(0, 2 * offs_h.shape[0])
                if CLAMP:
                    x = tl.load(ptr)
                else:
                    x = tl.load(ptr, mask=vj, other=0.0)
                lo, hi = tl.split(tl.reshape(x.to(tl.float32), (offs_h.shape[0], 2)))
            else:
                ptr = tl.multiple_of(row.to(tl.pointer_type(tl.int32)), 16) + offs_h
                if CLAMP:
                    w = tl.load(ptr)
                else:
                    w = tl.load(ptr, mask=vj, other=0)
                lo, hi = _unpack16(w, base.dtype.element_ty == tl.bfloat16)
        elif PACK == 1:
            w = tl.load((base + tj * s_l).to(tl.pointer_type(tl.int32)) + offs_h, mask=(2 * offs_h < dstate) & vj, other=0)
            lo, hi = _unpack16(w, base.dtype.element_ty == tl.bfloat16)
        else:
            ptr = base + tj * s_l + 2 * offs_h * s_n
            lo = tl.load(ptr, mask=(2 * offs_h < dstate) & vj, other=0.0).to(tl.float32)
            hi = tl.load(ptr + s_n, mask=(2 * offs_h + 1 < dstate) & vj, other=0.0).to(tl.float32)
        return lo, hi

    @triton.jit
    def _unpack16(w, BF16: tl.constexpr):
        """The two 16-bit floats of each 32-bit word of w (low half first) as float32."""
        if BF16:
            lo = (w << 16).to(tl.float32, bitcast=True)
            hi = (w & -65536).to(tl.float32, bitcast=True)
        else:
            lo = (w & 65535).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
            hi = (w >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        return lo, hi

    @triton.jit
    def _chunk_pos(c, j, L, CHUNK: tl.constexpr, REVERSE: tl.constexpr):
        """Memory position of token(s) j (an index or a [CHUNK] range) of chunk c in processing order, and
        whether they exist."""
        s = c * CHUNK + j
        if REVERSE:
            t = L - 1 - s
        else:
            t = s
        return t, s < L

    @triton.jit
    def _step_dt(xd, m2, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
        """Raw delta tile -> (pre-activation delta + bias, step size dt); dt = 0 on missing tokens."""
        if HAS_BIAS:
            xd = xd + bias[None, :]
        if SOFTPLUS:
            dt = _softplus(xd)
        else:
            dt = xd
        return xd, tl.where(m2, dt, 0.0)

    @triton.jit
    def _load_row(base, tj, offs_d, s_l, s_d, m):
        """Token tj's channels offs_d ([1, BLOCK_D]) of a [dim, L] plane as float32, zeros where m is false."""
        return tl.load(base + tj * s_l + offs_d * s_d, mask=m, other=0.0).to(tl.float32)

    @triton.jit
    def _pick_row(tile, offs_j, j):
        """Row j of a [CHUNK, BLOCK_D] tile as a [1, BLOCK_D] row (offs_j: [CHUNK, 1])."""
        return tl.sum(tl.where(offs_j == j, tile, _neg_zero(tile)), axis=0)[None, :]

    @triton.jit
    def _put_row(tile, offs_j, j, row):
        """Tile with row j replaced by row ([1, BLOCK_D]; offs_j: [CHUNK, 1])."""
        return tl.where(offs_j == j, row, tile)

    @triton.jit
    def _channel_consts_rows(A_ptr, D_ptr, bias_ptr, offs_d, s_A_n, s_A_d, dstate, mask_d, HAS_D: tl.constexpr,
                             HAS_BIAS: tl.constexpr, A_IS_LOG: tl.constexpr, BLOCK_D: tl.constexpr,
                             NP: tl.constexpr):
        """The constants of channels offs_d ([1, BLOCK_D], mask mask_d): A log2 e (exp(dt A) = exp2(dt A
        log2 e); with A_IS_LOG the tensor holds A_log and A = -exp(A_log) is formed here) as even / odd halves
        [NP/2, BLOCK_D], D and delta_bias as [1, BLOCK_D] rows (zeros when absent). A is read one dstate entry
        (one [1, BLOCK_D] row) at a time: a 2-D load whose strides are all unknown leaves its layout to Triton's
        coalescing pass, which on Triton 3.6 puts the dstate axis across lanes, a layout every state tile would
        inherit."""
        offs_h = tl.arange(0, NP // 2)[:, None]
        ae = tl.zeros([NP // 2, BLOCK_D], dtype=tl.float32)
        ao = tl.zeros([NP // 2, BLOCK_D], dtype=tl.float32)
        for k in tl.static_range(NP // 2):
            p = A_ptr + offs_d * s_A_d + (2 * k) * s_A_n
            ae = tl.where(offs_h == k, tl.load(p, mask=mask_d & (2 * k < dstate), other=0.0).to(tl.float32), ae)
            ao = tl.where(offs_h == k, tl.load(p + s_A_n, mask=mask_d & (2 * k + 1 < dstate), other=0.0).to(tl.float32),
                          ao)
        if A_IS_LOG:
            ae = -tl.exp(ae)
            ao = -tl.exp(ao)
        if HAS_D:
            Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        else:
            Dv = tl.zeros([1, BLOCK_D], dtype=tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        else:
            bias = tl.zeros([1, BLOCK_D], dtype=tl.float32)
        return ae * 1.4426950408889634, ao * 1.4426950408889634, Dv, bias

    @triton.jit
    def _advance(he, ho, A2e, A2o, dt_j, dtu_j, Be, Bo):
        """One token of the recurrence h = exp(dt A) h + dt u B on both state halves (dt_j, dtu_j: [1, BLOCK_D])."""
        he = tl.exp2(dt_j * A2e) * he + Be[:, None] * dtu_j
        ho = tl.exp2(dt_j * A2o) * ho + Bo[:, None] * dtu_j
        return he, ho

    @triton.jit
    def _fwd_tiles(u_base, dt_base, z_base, c, L, offs_d, offs_j, mask_d, s_u_d, s_u_l, s_dt_d, s_dt_l, s_z_d, s_z_l,
                   HAS_Z: tl.constexpr, CHUNK: tl.constexpr, REVERSE: tl.constexpr, BLOCK_D: tl.constexpr):
        """Chunk c's u, delta and z ([CHUNK, BLOCK_D] float32 tiles, zeros past the sequence; z zeros without
        HAS_Z), loaded one token row at a time, and the tiles' mask of existing (token, channel) entries."""
        m2 = (offs_j < 0) & mask_d
        u = tl.zeros([CHUNK, BLOCK_D], dtype=tl.float32)
        xd = tl.zeros([CHUNK, BLOCK_D], dtype=tl.float32)
        zz = tl.zeros([CHUNK, BLOCK_D], dtype=tl.float32)
        for j in tl.static_range(CHUNK):
            tj, vj = _chunk_pos(c, j, L, CHUNK, REVERSE)
            m = mask_d & vj
            m2 = (offs_j == j) & m | m2
            u = _put_row(u, offs_j, j, _load_row(u_base, tj, offs_d, s_u_l, s_u_d, m))
            xd = _put_row(xd, offs_j, j, _load_row(dt_base, tj, offs_d, s_dt_l, s_dt_d, m))
            if HAS_Z:
                zz = _put_row(zz, offs_j, j, _load_row(z_base, tj, offs_d, s_z_l, s_z_d, m))
        return u, xd, zz, m2

    # The forward exists once, as a body function for one program: one batch element (and, in the bidirectional
    # kernel, one direction) and one block of BLOCK_D channels. Callers hand it that program's base pointers
    # (already offset to its batch element / direction), the strides within them and every choice as a
    # compile-time constant, REVERSE included, so the kernel that calls the body twice (one call per direction,
    # in the two branches of a runtime `if`) gets two specialised copies of it, each compiled exactly as the
    # single-direction kernel's. (The backward's body is in rmeeto.ops.triton.scan_bwd.)
    @triton.jit
    def _scan_fwd_body(
        u_base, dt_base, z_base, out_base, B_base, C_base, A_ptr, D_ptr, bias_ptr, scale,
        pid_d, dim, L, dstate,
        s_u_d, s_u_l, s_dt_d, s_dt_l, s_A_d, s_A_n, s_B_n, s_B_l, s_C_n, s_C_l, s_z_d, s_z_l, s_o_d, s_o_l,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        REVERSE: tl.constexpr, PACK: tl.constexpr, A_IS_LOG: tl.constexpr, SCALED: tl.constexpr,
        BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, NP: tl.constexpr, PREFETCH: tl.constexpr,
    ):
        """The forward scan of one batch element's channels pid_d * BLOCK_D + [0, BLOCK_D).

        u_base, dt_base, z_base, out_base: the element's [dim, L] planes of u, delta, z and out (strides s_*_d,
        s_*_l; z_base unused without HAS_Z); B_base, C_base: its [dstate, L] planes of B and C; A_ptr [dim,
        dstate], D_ptr, bias_ptr [dim] (unused without HAS_D / HAS_BIAS). REVERSE: the recurrence runs from
        token L-1 down to 0. SCALED: the output is multiplied by ``scale`` in float32 before its rounding
        (``scale`` is unused otherwise). PREFETCH: every chunk step issues the next chunk's loads of u, delta and
        z before its math, so their memory latency overlaps that math instead of stalling the warp."""
        # every per-channel vector is a [1, BLOCK_D] row: it then has the state tiles' layout (see above)
        offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)[None, :]
        offs_h = tl.arange(0, NP // 2)
        mask_d = offs_d < dim

        A2e, A2o, Dv, bias = _channel_consts_rows(A_ptr, D_ptr, bias_ptr, offs_d, s_A_n, s_A_d, dstate, mask_d,
                                                  HAS_D, HAS_BIAS, A_IS_LOG, BLOCK_D, NP)

        offs_j = tl.arange(0, CHUNK)[:, None]
        he = tl.zeros([NP // 2, BLOCK_D], dtype=tl.float32)  # state, even / odd dstate entries
        ho = tl.zeros([NP // 2, BLOCK_D], dtype=tl.float32)
        if PREFETCH:
            u_n, xd_n, zz_n, m2_n = _fwd_tiles(u_base, dt_base, z_base, 0, L, offs_d, offs_j, mask_d, s_u_d, s_u_l,
                                               s_dt_d, s_dt_l, s_z_d, s_z_l, HAS_Z, CHUNK, REVERSE, BLOCK_D)
        for c in range(0, tl.cdiv(L, CHUNK)):
            # the chunk's inputs first (all loads ahead of the chunk's stores; the launchers allocate the output)
            if PREFETCH:
                u, xd, zz, m2 = u_n, xd_n, zz_n, m2_n
                u_n, xd_n, zz_n, m2_n = _fwd_tiles(u_base, dt_base, z_base, c + 1, L, offs_d, offs_j, mask_d, s_u_d,
                                                   s_u_l, s_dt_d, s_dt_l, s_z_d, s_z_l, HAS_Z, CHUNK, REVERSE, BLOCK_D)
            else:
                u, xd, zz, m2 = _fwd_tiles(u_base, dt_base, z_base, c, L, offs_d, offs_j, mask_d, s_u_d, s_u_l,
                                           s_dt_d, s_dt_l, s_z_d, s_z_l, HAS_Z, CHUNK, REVERSE, BLOCK_D)
            if HAS_BIAS:
                xd = xd + bias
            if SOFTPLUS:
                xd = _softplus(xd)
            dt = tl.where(m2, xd, 0.0)
            dtu = dt * u
            y = tl.zeros([CHUNK, BLOCK_D], dtype=tl.float32)
            for j in tl.static_range(CHUNK):
                tj, vj = _chunk_pos(c, j, L, CHUNK, REVERSE)
                Be, Bo = _load_pair(B_base, tj, s_B_l, s_B_n, offs_h, dstate, vj, PACK, True)
                Ce, Co = _load_pair(C_base, tj, s_C_l, s_C_n, offs_h, dstate, vj, PACK, True)
                he, ho = _advance(he, ho, A2e, A2o, _pick_row(dt, offs_j, j), _pick_row(dtu, offs_j, j), Be, Bo)
                y = _put_row(y, offs_j, j, _dot_state(he, ho, Ce, Co, NP)[None, :])
            if HAS_D:
                y += Dv * u
            if HAS_Z:
                y = y * (zz * _sigmoid(zz))
            if SCALED:
                y = y * scale
            for j in tl.static_range(CHUNK):
                tj, vj = _chunk_pos(c, j, L, CHUNK, REVERSE)
                tl.store(out_base + tj * s_o_l + offs_d * s_o_d, _pick_row(y, offs_j, j).to(out_base.dtype.element_ty),
                         mask=mask_d & vj)

    @triton.jit(do_not_specialize=_SCAN_NOSPEC)
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
        SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr, PACK: tl.constexpr, A_IS_LOG: tl.constexpr,
        BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, NP: tl.constexpr, PREFETCH: tl.constexpr,
    ):
        """out [batch, dim, L] (strides s_o_*): the scan of u [batch, dim, L]. Grid (batch, channel blocks)."""
        pid_b = tl.program_id(0).to(tl.int64)
        _scan_fwd_body(
            u_ptr + pid_b * s_u_b, delta_ptr + pid_b * s_dt_b, z_ptr + pid_b * s_z_b, out_ptr + pid_b * s_o_b,
            B_ptr + pid_b * s_B_b, C_ptr + pid_b * s_C_b, A_ptr, D_ptr, bias_ptr, 1.0,
            tl.program_id(1), dim, L, dstate,
            s_u_d, s_u_l, s_dt_d, s_dt_l, s_A_d, s_A_n, s_B_n, s_B_l, s_C_n, s_C_l, s_z_d, s_z_l, s_o_d, s_o_l,
            HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, REVERSE, PACK, A_IS_LOG, False, BLOCK_D, CHUNK, NP, PREFETCH,
        )


# ------------------------------------------------------------------------------------------ launchers
def _np(dstate: int) -> int:
    return max(2, next_pow2(dstate))


def _require_runnable(u: Tensor) -> None:
    if not _HAS_TRITON:
        raise RuntimeError("selective_scan_triton needs triton")
    if not u.is_cuda and not _interpreting():
        raise RuntimeError("selective_scan_triton needs CUDA tensors (or TRITON_INTERPRET=1)")


def _bc_mode(*bcs: Tensor) -> int:
    """How the kernels read B and C (:func:`_load_pair`'s PACK) when every tensor of ``bcs`` ([batch, dstate,
    L] each) allows it: 3 for float32 and 2 for 16-bit ones whose dstate entries are contiguous, exactly a power
    of two (no padding to mask) and whose every (batch, token) row starts 16 bytes aligned (one vector load
    per row); 1 for 16-bit ones with even dstate, unit dstate stride and 4-byte aligned rows (32-bit pairs);
    else 0."""
    if not _PACK_BC:
        return 0
    fp32, rows = bcs[0].dtype == torch.float32, True
    for X in bcs:
        size, dstate = X.element_size(), X.shape[1]
        if X.dtype != bcs[0].dtype or size not in (2, 4) or (dstate > 1 and X.stride(1) != 1):
            return 0
        if size == 2 and (dstate % 2 or X.data_ptr() % 4 or X.stride(0) % 2 or X.stride(2) % 2):
            return 0
        rows = rows and dstate == _np(dstate) and not (X.data_ptr() % 16 or (X.stride(0) * size) % 16
                                                        or (X.stride(2) * size) % 16)
    if rows:
        return 3 if fp32 else 2
    return 0 if fp32 else 1


def _prefetches(cfg: dict, pack: int) -> bool:
    """Whether the forward prefetches (see _scan_fwd_body) with tile ``cfg`` and B / C read mode ``pack``: only
    with 16-bit vector rows (mode 2: Vim-S / B in fp16 / bf16), where it was measured faster (H200, graphed:
    Vim-S / B +15% with the instruction cuts, against +5 / +10% without prefetch). With 16-bit pairs (mode 1:
    B / C rows 8-byte aligned, as Vim-Ti's dt_rank of 12 leaves them in its training path; in inference the
    projection kernel aligns them, :func:`rmeeto.ops.triton.proj.xdbl_row`) the same tile made graphed Vim-Ti 4%
    slower than the previous release where leaving it off made it 4% faster; the float32 and one-element reads
    were not measured, so they keep the code they had."""
    return bool(cfg.get("prefetch", False)) and pack == 2


def _like_layout(u: Tensor, dtype) -> Tensor:
    """A [batch, dim, L] buffer laid out like u: channels-last (a transposed [batch, L, dim] tensor) when u's
    channel stride is 1, contiguous otherwise. Vim hands the scan channels-last views, so its outputs and
    gradients come back in the layout the surrounding layers read without copies."""
    batch, dim, L = u.shape
    if u.stride(1) == 1 and dim > 1:
        return _alloc((batch, L, dim), dtype, u.device).transpose(1, 2)
    return _alloc((batch, dim, L), dtype, u.device)


def _fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, a_is_log=False) -> Tensor:
    """Forward launcher: out [batch, dim, L] laid out like u (see :func:`_like_layout`)."""
    _require_runnable(u)
    batch, dim, L = u.shape
    dstate = A.shape[1]
    out = _like_layout(u, u.dtype)
    if out.numel() == 0:
        return out
    cfg = FWD_CONFIG
    bd = cfg["BLOCK_D"]
    zz = z if z is not None else u
    pack = _bc_mode(B, C)
    launch(
        _scan_fwd_kernel, (batch, (dim + bd - 1) // bd), u.device,
        u, delta, A, B, C,
        D if D is not None else A, zz, delta_bias if delta_bias is not None else A, out,
        dim, L, dstate,
        *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *zz.stride(), *out.stride(),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus), REVERSE=bool(reverse), PACK=pack, A_IS_LOG=bool(a_is_log),
        BLOCK_D=bd, CHUNK=cfg["CHUNK"], NP=_np(dstate), PREFETCH=_prefetches(cfg, pack),
        num_warps=cfg["num_warps"], num_stages=1,
    )
    return out


# The backward is :mod:`rmeeto.ops.triton.scan_bwd` (its reduce-scatter kernels). It builds on this module's jit
# helpers and imports it, so this module cannot import it back (a late import inside a function would still make
# the two modules an import cycle): it registers its launchers here when it is imported, {"bwd": scan_bwd.bwd,
# "bwd_bidir": scan_bwd.bwd_bidir}. The package's __init__ imports it, and Python imports the package before any
# module in it, so importing this module registers them.
_BWD: dict = {}


def _registered(name: str):
    launcher = _BWD.get(name)
    if launcher is None:  # only when this file was loaded outside its package
        raise RuntimeError("the selective-scan backward is not registered: import rmeeto.ops.triton.scan_bwd")
    return launcher


def _bwd(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, a_is_log=False):
    """The gradients for dout [batch, dim, L], by :func:`rmeeto.ops.triton.scan_bwd.bwd`: (du, ddelta, dA, dB, dC,
    dD, dz, ddelta_bias); du, ddelta, dz laid out like u, dB / dC [batch, dstate, L] views of [batch, L, dstate],
    dD / ddelta_bias [dim] (float32 when D / delta_bias are absent), dz empty when z is absent. The one entry
    the custom op and the autograd function call."""
    return _registered("bwd")(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, a_is_log)


# --------------------------------------------------------------------------------------- custom ops
@library_op("selective_scan")
def _selective_scan_op(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
    delta_bias: Optional[Tensor], delta_softplus: bool, reverse: bool, a_is_log: bool,
) -> Tensor:
    return _fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, a_is_log)


@torch.library.register_fake(_selective_scan_op)
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, a_is_log):
    return _like_layout(u, u.dtype)


@library_op("selective_scan_bwd")
def _selective_scan_bwd_op(
    dout: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
    z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool, reverse: bool, a_is_log: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias); dD / ddelta_bias are [dim] even when D /
    delta_bias are absent, dz is an empty tensor when z is absent."""
    return _bwd(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, a_is_log)


@torch.library.register_fake(_selective_scan_bwd_op)
def _(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, a_is_log):
    batch, dim, L = u.shape
    dev = u.device
    dstate = B.shape[1]
    return (
        _like_layout(u, u.dtype),
        _like_layout(u, delta.dtype),
        torch.empty(A.shape, dtype=A.dtype, device=dev),
        torch.empty((batch, L, dstate), dtype=B.dtype, device=dev).transpose(1, 2),
        torch.empty((batch, L, dstate), dtype=C.dtype, device=dev).transpose(1, 2),
        torch.empty((dim,), dtype=D.dtype if D is not None else torch.float32, device=dev),
        _like_layout(u, z.dtype) if z is not None else torch.empty(0, dtype=u.dtype, device=dev),
        torch.empty((dim,), dtype=delta_bias.dtype if delta_bias is not None else torch.float32, device=dev),
    )


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, a_is_log = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
    ctx.flags = (delta_softplus, reverse, a_is_log)


def _input_grads(ctx, grads):
    """The backward's (du, ddelta, dA, dB, dC, dD, dz, dbias) as gradients of the op's eleven inputs."""
    du, ddelta, dA, dB, dC, dD, dz, dbias = grads
    _, _, _, _, _, D, z, delta_bias = ctx.saved_tensors
    return (
        du, ddelta, dA, dB, dC,
        dD if D is not None else None,
        dz if z is not None else None,
        dbias if delta_bias is not None else None,
        None, None, None,
    )


def _backward(ctx, dout):
    return _input_grads(ctx, _selective_scan_bwd_op(dout, *ctx.saved_tensors, *ctx.flags))


torch.library.register_autograd(_selective_scan_op, _backward, setup_context=_setup_context)


class _SelectiveScan(torch.autograd.Function):
    """Eager twin of the custom op: the same launchers, without torch.library's dispatch (~25 us a call)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, a_is_log):
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        ctx.flags = (delta_softplus, reverse, a_is_log)
        return _fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, a_is_log)

    @staticmethod
    def backward(ctx, dout):
        return _input_grads(ctx, _bwd(dout, *ctx.saved_tensors, *ctx.flags))


def _selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, a_is_log) -> Tensor:
    """Unchecked entry (the dispatcher has checked the shapes): the custom op while torch.compile traces (an
    opaque node, no graph break), else the autograd function, else (no input needs a gradient) the launcher."""
    if torch.compiler.is_compiling():
        return _selective_scan_op(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, a_is_log)
    if torch.is_grad_enabled() and (
        u.requires_grad or delta.requires_grad or A.requires_grad or B.requires_grad or C.requires_grad
        or (D is not None and D.requires_grad) or (z is not None and z.requires_grad)
        or (delta_bias is not None and delta_bias.requires_grad)
    ):
        return _SelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, a_is_log)
    return _fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, a_is_log)


def selective_scan_triton(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, reverse=False, a_is_log=False
) -> Tensor:
    """Fused Triton selective scan (forward and backward). Same signature and semantics as
    :func:`rmeeto.ops.selective_scan.selective_scan_ref`; ``a_is_log=True``: ``A`` holds A_log (the Mamba
    parameter) and the kernels form A = -exp(A_log) themselves (no exp / neg / cast kernels per call)."""
    check_scan_shapes(u, delta, A, B, C, D, z, delta_bias)
    return _selective_scan(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), bool(reverse), bool(a_is_log))


# ------------------------------------------------------------------------------------ both directions
# Vim's mixer scans the same tokens forwards (its own u, delta, A, B, C, D, delta_bias) and backwards (another
# set), gated by one shared z. The bidirectional kernels do both in one launch: the grid's third axis is the
# direction (0 forwards, 1 backwards). The forward's program branches on it and calls the single-direction body
# with its direction's tensors and REVERSE=False or True; each branch is that body compiled for its direction (its
# addressing and REVERSE are constants there), so the arithmetic is the single-direction kernel's to the bit.
# Only the direction's offsets into the [2, ...] outputs, and the output scaling (SCALED), differ. The backward's
# (rmeeto.ops.triton.scan_bwd) takes the same inputs and [2, ...] layouts (_BIDIR_NOSPEC, _like_layout2,
# _bidir_flags). Each direction's inputs must share one layout (the launcher copies them to contiguous tensors
# otherwise).
_BIDIR_NOSPEC = _SCAN_NOSPEC + ["s_o_r", "s_g_r"]

if _HAS_TRITON:
    @triton.jit(do_not_specialize=_BIDIR_NOSPEC)
    def _scan_bidir_fwd_kernel(
        uf_ptr, ub_ptr, dtf_ptr, dtb_ptr, Af_ptr, Ab_ptr, Bf_ptr, Bb_ptr, Cf_ptr, Cb_ptr, Df_ptr, Db_ptr,
        z_ptr, biasf_ptr, biasb_ptr, out_ptr, scale,
        dim, L, dstate,
        s_u_b, s_u_d, s_u_l,
        s_dt_b, s_dt_d, s_dt_l,
        s_A_d, s_A_n,
        s_B_b, s_B_n, s_B_l,
        s_C_b, s_C_n, s_C_l,
        s_z_b, s_z_d, s_z_l,
        s_o_r, s_o_b, s_o_d, s_o_l,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
        SOFTPLUS: tl.constexpr, PACK: tl.constexpr, A_IS_LOG: tl.constexpr,
        BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, NP: tl.constexpr, PREFETCH: tl.constexpr,
        PDL: tl.constexpr = False,
    ):
        """out [2, batch, dim, L] (strides s_o_*): out[0] the forward scan of the *f inputs, out[1] the backward
        scan of the *b inputs, both gated by z and multiplied by ``scale`` in float32 before rounding.
        Grid (batch, channel blocks, 2)."""
        follow_previous(PDL)  # under PDL: wait for the previous kernel, then release the next
        pid_b = tl.program_id(0).to(tl.int64)
        pid_d = tl.program_id(1)
        z_base = z_ptr + pid_b * s_z_b
        if tl.program_id(2) == 0:
            _scan_fwd_body(
                uf_ptr + pid_b * s_u_b, dtf_ptr + pid_b * s_dt_b, z_base, out_ptr + pid_b * s_o_b,
                Bf_ptr + pid_b * s_B_b, Cf_ptr + pid_b * s_C_b, Af_ptr, Df_ptr, biasf_ptr, scale,
                pid_d, dim, L, dstate,
                s_u_d, s_u_l, s_dt_d, s_dt_l, s_A_d, s_A_n, s_B_n, s_B_l, s_C_n, s_C_l, s_z_d, s_z_l, s_o_d, s_o_l,
                HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, False, PACK, A_IS_LOG, True, BLOCK_D, CHUNK, NP, PREFETCH,
            )
        else:
            _scan_fwd_body(
                ub_ptr + pid_b * s_u_b, dtb_ptr + pid_b * s_dt_b, z_base, out_ptr + s_o_r + pid_b * s_o_b,
                Bb_ptr + pid_b * s_B_b, Cb_ptr + pid_b * s_C_b, Ab_ptr, Db_ptr, biasb_ptr, scale,
                pid_d, dim, L, dstate,
                s_u_d, s_u_l, s_dt_d, s_dt_l, s_A_d, s_A_n, s_B_n, s_B_l, s_C_n, s_C_l, s_z_d, s_z_l, s_o_d, s_o_l,
                HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, True, PACK, A_IS_LOG, True, BLOCK_D, CHUNK, NP, PREFETCH,
            )


def _same_layout(a: Tensor, b: Tensor) -> bool:
    """Same shape, dtype and strides (strides of size-1 dimensions never matter)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    sa, sb = a.stride(), b.stride()
    return sa == sb or all(x == y or n == 1 for x, y, n in zip(sa, sb, a.shape))


def _pair(name: str, f: Optional[Tensor], b: Optional[Tensor]):
    """The two directions' tensors of one input with one layout (contiguous copies if theirs differ)."""
    if (f is None) != (b is None):
        raise ValueError(f"selective_scan_bidir: {name} is given for one direction only")
    if f is None or _same_layout(f, b):
        return f, b
    if f.shape != b.shape or f.dtype != b.dtype:
        raise ValueError(f"selective_scan_bidir: the two directions' {name} differ: "
                         f"{tuple(f.shape)} {f.dtype} vs {tuple(b.shape)} {b.dtype}")
    return f.contiguous(), b.contiguous()


def _like_layout2(u: Tensor, dtype) -> Tensor:
    """[2, batch, dim, L] buffer, each direction laid out as :func:`_like_layout` lays out one."""
    batch, dim, L = u.shape
    if u.stride(1) == 1 and dim > 1:
        return _alloc((2, batch, L, dim), dtype, u.device).transpose(2, 3)
    return _alloc((2, batch, dim, L), dtype, u.device)


def _bidir_flags(D_f, z, bias_f, delta_softplus, a_is_log, B_f, C_f, B_b, C_b, NP):
    return dict(HAS_D=D_f is not None, HAS_Z=z is not None, HAS_BIAS=bias_f is not None,
                SOFTPLUS=bool(delta_softplus), PACK=_bc_mode(B_f, C_f, B_b, C_b),
                A_IS_LOG=bool(a_is_log), NP=NP)


def _fwd_bidir(u_f, u_b, delta_f, delta_b, A_f, A_b, B_f, B_b, C_f, C_b, D_f, D_b, z, bias_f, bias_b,
               delta_softplus, scale, a_is_log) -> Tensor:
    _require_runnable(u_f)
    out = _like_layout2(u_f, u_f.dtype)
    if out.numel() == 0:
        return out
    zz = z if z is not None else u_f
    grid, tail, meta = fwd_bidir_spec(u_f, delta_f, A_f, B_f, C_f, B_b, C_b, D_f, z, bias_f, out, delta_softplus,
                                      scale, a_is_log)
    launch(
        _scan_bidir_fwd_kernel, grid, u_f.device,
        u_f, u_b, delta_f, delta_b, A_f, A_b, B_f, B_b, C_f, C_b,
        D_f if D_f is not None else A_f, D_b if D_b is not None else A_b, zz,
        bias_f if bias_f is not None else A_f, bias_b if bias_b is not None else A_b, out, *tail, **meta,
    )
    return out


def fwd_bidir_spec(u_f, delta_f, A_f, B_f, C_f, B_b, C_b, D_f, z, bias_f, out, delta_softplus, scale, a_is_log
                   ) -> tuple[tuple, tuple, dict]:
    """(grid, scalar arguments, constexprs and launch options) of the bidirectional forward kernel for these
    inputs (the backward direction's u / delta / A laid out as the forward's, as :func:`_pair` makes them) into
    ``out`` [2, batch, dim, L]. The kernel's 16 tensors come first: u, delta, A, B, C of both directions, D (or
    A), z (or u_f), delta_bias (or A) of both, out."""
    batch, dim, L = u_f.shape
    dstate = A_f.shape[1]
    cfg = FWD_CONFIG
    zz = z if z is not None else u_f
    flags = _bidir_flags(D_f, z, bias_f, delta_softplus, a_is_log, B_f, C_f, B_b, C_b, _np(dstate))
    tail = (float(scale), dim, L, dstate, *u_f.stride(), *delta_f.stride(), *A_f.stride(), *B_f.stride(),
            *C_f.stride(), *zz.stride(), *out.stride())
    meta = dict(**flags, BLOCK_D=cfg["BLOCK_D"], CHUNK=cfg["CHUNK"], PREFETCH=_prefetches(cfg, flags["PACK"]),
                num_warps=cfg["num_warps"], num_stages=1, **pdl_meta())
    return (batch, cdiv(dim, cfg["BLOCK_D"]), 2), tail, meta


def _bwd_bidir(dout, u_f, u_b, delta_f, delta_b, A_f, A_b, B_f, B_b, C_f, C_b, D_f, D_b, z, bias_f, bias_b,
               delta_softplus, scale, a_is_log):
    """The gradients of both directions for dout [2, batch, dim, L] (the gradient of the scaled output), by
    :func:`rmeeto.ops.triton.scan_bwd.bwd_bidir` (one launch), as [2, ...] stacks (direction first): du, ddelta
    [2, batch, dim, L], dA [2, dim, dstate], dB, dC [2, batch, dstate, L], dD, dbias [2, dim] (float32 when D /
    delta_bias are absent), and dz [batch, dim, L] summed over the directions (an empty tensor when z is absent).
    The one entry the custom op and the autograd function call."""
    return _registered("bwd_bidir")(dout, u_f, u_b, delta_f, delta_b, A_f, A_b, B_f, B_b, C_f, C_b, D_f, D_b, z,
                                    bias_f, bias_b, delta_softplus, scale, a_is_log)


@library_op("selective_scan_bidir")
def _selective_scan_bidir_op(
    u_f: Tensor, u_b: Tensor, delta_f: Tensor, delta_b: Tensor, A_f: Tensor, A_b: Tensor, B_f: Tensor,
    B_b: Tensor, C_f: Tensor, C_b: Tensor, D_f: Optional[Tensor], D_b: Optional[Tensor], z: Optional[Tensor],
    bias_f: Optional[Tensor], bias_b: Optional[Tensor], delta_softplus: bool, scale: float, a_is_log: bool,
) -> Tensor:
    return _fwd_bidir(u_f, u_b, delta_f, delta_b, A_f, A_b, B_f, B_b, C_f, C_b, D_f, D_b, z, bias_f, bias_b,
                      delta_softplus, scale, a_is_log)


@torch.library.register_fake(_selective_scan_bidir_op)
def _(u_f, u_b, delta_f, delta_b, A_f, A_b, B_f, B_b, C_f, C_b, D_f, D_b, z, bias_f, bias_b, delta_softplus,
      scale, a_is_log):
    return _like_layout2(u_f, u_f.dtype)


@library_op("selective_scan_bidir_bwd")
def _selective_scan_bidir_bwd_op(
    dout: Tensor, u_f: Tensor, u_b: Tensor, delta_f: Tensor, delta_b: Tensor, A_f: Tensor, A_b: Tensor,
    B_f: Tensor, B_b: Tensor, C_f: Tensor, C_b: Tensor, D_f: Optional[Tensor], D_b: Optional[Tensor],
    z: Optional[Tensor], bias_f: Optional[Tensor], bias_b: Optional[Tensor], delta_softplus: bool, scale: float,
    a_is_log: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(du, ddelta, dA, dB, dC, dD, dz, ddelta_bias) as returned by :func:`_bwd_bidir`."""
    return _bwd_bidir(dout, u_f, u_b, delta_f, delta_b, A_f, A_b, B_f, B_b, C_f, C_b, D_f, D_b, z, bias_f,
                      bias_b, delta_softplus, scale, a_is_log)


@torch.library.register_fake(_selective_scan_bidir_bwd_op)
def _(dout, u_f, u_b, delta_f, delta_b, A_f, A_b, B_f, B_b, C_f, C_b, D_f, D_b, z, bias_f, bias_b,
      delta_softplus, scale, a_is_log):
    batch, dim, L = u_f.shape
    dev = u_f.device
    dstate = B_f.shape[1]
    return (
        _like_layout2(u_f, u_f.dtype),
        _like_layout2(u_f, delta_f.dtype),
        torch.empty((2,) + tuple(A_f.shape), dtype=A_f.dtype, device=dev),
        torch.empty((2, batch, L, dstate), dtype=B_f.dtype, device=dev).transpose(2, 3),
        torch.empty((2, batch, L, dstate), dtype=C_f.dtype, device=dev).transpose(2, 3),
        torch.empty((2, dim), dtype=D_f.dtype if D_f is not None else torch.float32, device=dev),
        _like_layout(u_f, z.dtype) if z is not None else torch.empty(0, dtype=u_f.dtype, device=dev),
        torch.empty((2, dim), dtype=bias_f.dtype if bias_f is not None else torch.float32, device=dev),
    )


def _setup_context_bidir(ctx, inputs, output):
    *tensors, delta_softplus, scale, a_is_log = inputs
    ctx.save_for_backward(*tensors)
    ctx.flags = (delta_softplus, scale, a_is_log)


def _backward_bidir(ctx, dout):
    saved = ctx.saved_tensors
    return _bidir_input_grads(saved, _selective_scan_bidir_bwd_op(dout, *saved, *ctx.flags))


def _bidir_input_grads(saved, grads):
    """The op's input gradients (None for absent inputs and the flags) from the [2, ...] gradient stacks."""
    du, ddelta, dA, dB, dC, dD, dz, dbias = grads
    D_f, z, bias_f = saved[10], saved[12], saved[13]
    has_D, has_bias = D_f is not None, bias_f is not None
    return (
        du[0], du[1], ddelta[0], ddelta[1], dA[0], dA[1], dB[0], dB[1], dC[0], dC[1],
        dD[0] if has_D else None, dD[1] if has_D else None,
        dz if z is not None else None,
        dbias[0] if has_bias else None, dbias[1] if has_bias else None,
        None, None, None,
    )


torch.library.register_autograd(_selective_scan_bidir_op, _backward_bidir, setup_context=_setup_context_bidir)


class _SelectiveScanBidir(torch.autograd.Function):
    """Eager twin of ``rmeeto::selective_scan_bidir``: the same launchers without torch.library's dispatch."""

    @staticmethod
    def forward(ctx, *inputs):
        *tensors, delta_softplus, scale, a_is_log = inputs
        ctx.save_for_backward(*tensors)
        ctx.flags = (delta_softplus, scale, a_is_log)
        return _fwd_bidir(*inputs)

    @staticmethod
    def backward(ctx, dout):
        saved = ctx.saved_tensors
        return _bidir_input_grads(saved, _bwd_bidir(dout, *saved, *ctx.flags))


def selective_scan_bidir_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                                scale=1.0, a_is_log=False) -> Tensor:
    """Both scan directions in one launch (forward and backward); signature and semantics of
    :func:`rmeeto.ops.selective_scan.selective_scan_bidir`: u, delta, A, B, C, D, delta_bias are pairs
    (forward direction, backward direction), z is shared; returns [2, batch, dim, L] times ``scale``."""
    for name, pair in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C)):
        if len(pair) != 2:
            raise ValueError(f"selective_scan_bidir: {name} must be a pair (forward, backward), got {len(pair)}")
    D = (None, None) if D is None else D
    delta_bias = (None, None) if delta_bias is None else delta_bias
    for r in (0, 1):
        check_scan_shapes(u[r], delta[r], A[r], B[r], C[r], D[r], z, delta_bias[r])
    return _selective_scan_bidir(u, delta, A, B, C, D, z, delta_bias, delta_softplus, scale, a_is_log)


def _selective_scan_bidir(u, delta, A, B, C, D, z, delta_bias, delta_softplus, scale, a_is_log) -> Tensor:
    """:func:`selective_scan_bidir_triton` after its checks, for callers that made them (the dispatcher):
    every input a (forward, backward) pair, D and delta_bias pairs of None when absent."""
    u_f, u_b = _pair("u", *u)
    delta_f, delta_b = _pair("delta", *delta)
    A_f, A_b = _pair("A", *A)
    B_f, B_b = _pair("B", *B)
    C_f, C_b = _pair("C", *C)
    D_f, D_b = _pair("D", *D)
    bias_f, bias_b = _pair("delta_bias", *delta_bias)
    args = (u_f, u_b, delta_f, delta_b, A_f, A_b, B_f, B_b, C_f, C_b, D_f, D_b, z, bias_f, bias_b,
            bool(delta_softplus), float(scale), bool(a_is_log))
    if torch.compiler.is_compiling():  # an opaque node for the tracer
        return _selective_scan_bidir_op(*args)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args[:15]):
        return _SelectiveScanBidir.apply(*args)
    return _fwd_bidir(*args)  # no gradient needed: the launcher alone

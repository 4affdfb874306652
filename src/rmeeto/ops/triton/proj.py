"""Triton kernel of the bidirectional mixer's input-dependent scan parameters (inference): both directions'
x_proj and dt_proj in one launch.

Per direction d (forward, backward) a Vim block computes, from its conv output u_d [batch, length, D]:

    x_dbl_d = u_d @ Wx_d.T                        # [batch, length, R + 2N], rounded to u's dtype
    dt_d, B_d, C_d = x_dbl_d.split([R, N, N], -1)
    delta_d = dt_d @ Wdt_d.T                      # [batch, length, D], the bias is added inside the scan

four cuBLAS GEMMs a block, two of them with 24-56 output columns (Vim-S): 4 of a block's 13 launches, run at
1.0-2.9 TB/s on an H200 (Vim-Ti to B). :func:`bidir_scan_inputs` does the four in one kernel: a program takes
BLOCK_M rows (or its tiles' ROWS, the rest masked) of one direction, accumulates their x_dbl in float32 over the D
input channels (its dt part and its B / C part as two accumulators of R_PAD and 2N columns, so no register tensor is
sliced), rounds it, stores it (B and C from a 16-byte boundary of the row, where the scan reads them with vector
loads: :func:`xdbl_row`), and multiplies the rounded dt part straight into delta, BLOCK_N channels at a time: u is
read once, x_dbl's dt part never goes back to memory to be read again.

Same roundings as the PyTorch ops (float32 accumulation, one rounding of x_dbl and one of delta), summed in
another order than cuBLAS's, so equal to rounding, not bit for bit (tests/ops/test_interpreted.py,
tests/ops/test_gpu_proj.py). 16-bit activations only; weights of any float dtype are rounded to the
activations' dtype as they are loaded (what autocast's casts do). No gradient: :mod:`rmeeto.ops.proj` takes
it only when none has to flow.
"""

from __future__ import annotations

import torch

from rmeeto.ops.triton._launch import cdiv, device_sms, launch, next_pow2, pdl_meta
from rmeeto.ops.triton._pdl import follow_previous

try:
    import triton
    import triton.language as tl

    _HAS_TRITON = True
except Exception:  # pragma: no cover - depends on the install
    _HAS_TRITON = False

Tensor = torch.Tensor

__all__ = ["is_available", "bidir_scan_inputs", "spec", "proj_config", "hopper_sms", "xdbl_row", "xdbl_parts",
           "ALIGN_BC", "PROJ_CONFIG", "PROJ_CONFIG_LARGE", "PROJ_CONFIG_NARROW", "PROJ_CONFIG_WAVE"]

# BLOCK_M rows per program, BLOCK_K input channels per step of the x_proj loop, BLOCK_N output channels per
# step of the dt_proj loop. benchmarks/bench_proj_gpu.py on an H200 (132 SMs), graphed, both directions. Session
# 16: at 128 x 197 and 128 x 164 rows the large tiles took Vim-S 59.4 -> 52.6 us and 53.5 -> 48.5 us (Vim-Ti: 30.8
# -> 28.3 at 197). Session 17 (`--sweep --lengths 197,186,...,76`, every token count of the merged Vim-S / B
# schedule at batch 128, results/s17/call1_proj_*.txt): at 768 channels the large tiles win from 128 x 142 rows
# (46.5 against 51.3 us), the default below (131: 37.6 against 39.5); at 1536 channels (Vim-B) the best tiles
# change with the number of programs against the SMs (whole waves), so they are a table by rows: 128 x 131..109
# rows run in 60-68 us with the large tiles against 74-84 with the default ones, 128 x 164..142 in 83-89 against
# 87-97 with 64 x 64 x 64 tiles in two stages; over the merged Vim-B forward 1,942 -> 1,795 us.
PROJ_CONFIG = {"BLOCK_M": 64, "BLOCK_K": 64, "BLOCK_N": 128, "num_warps": 4, "num_stages": 3}
PROJ_CONFIG_LARGE = {"BLOCK_M": 128, "BLOCK_K": 64, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3}
# Vim-Ti's width (384 channels) over the rows of its batch-128 schedules. Session 31 (call 1, `--dims 384 --sweep
# --lengths 197,157,152,147,76`, results/s31/call1/proj_tiles_ti.txt): these tiles 27.1 / 23.0 / 23.0 / 22.3 / 11.9
# us against 28.1 / 25.1 / 24.8 / 24.4 / 11.9 for the tiles the rule below took (large from 128 x 137 rows)
PROJ_CONFIG_NARROW = {"BLOCK_M": 64, "BLOCK_K": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}
PROJ_NARROW_CHANNELS = 384
PROJ_NARROW_ROWS = (128 * 76, 128 * 197)  # the rows measured; outside them the rule below
PROJ_LARGE_ROWS = 128 * 137  # rows from which, up to PROJ_LARGE_CHANNELS channels, the large tiles are taken
PROJ_LARGE_CHANNELS = 768
# above PROJ_LARGE_CHANNELS: (fewest rows, tiles), first match
PROJ_WIDE_TABLE = (
    (128 * 192, PROJ_CONFIG),
    (128 * 170, {"BLOCK_M": 128, "BLOCK_K": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}),
    (128 * 137, {"BLOCK_M": 64, "BLOCK_K": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}),
    (128 * 104, PROJ_CONFIG_LARGE),
    (0, PROJ_CONFIG),
)


# Whole waves of the large tiles on Hopper (compute capability 9.x), where they are taken (from PROJ_LARGE_ROWS rows,
# above PROJ_NARROW_CHANNELS up to PROJ_LARGE_CHANNELS channels): an SM holds PROJ_WAVE_PER_SM programs of them at
# once (their pipeline stages' shared memory), so 2 x cdiv(rows, 128) programs leave the last wave part-full at most
# row counts, and the time per call falls in steps (Vim-S, batch 128, 142 tokens: 284 programs where a wave holds
# 396; 46.3 us against 52.5 at 197 tokens). Spread instead over whole waves, a program takes
# cdiv(rows, programs) rows rounded up to 8 (ROWS; the tile's other rows masked), in the same tiles with 4 warps
# where that leaves rows masked. Thirty-fourth session (H200, 132 SMs, benchmarks/proj_balance_gpu.py, call 2,
# graphed us per call at Vim-S width): 175 / 164 / 153 / 142 tokens 49.9 / 48.5 / 47.4 / 46.3 -> 48.8 / 46.5 / 44.4
# / 42.2; 4 programs per SM took 58-68 (a second wave); 197 and 186 tokens fill the wave already (52.5 / 51.4,
# unchanged). Not measured on other GPUs, which keep the large tiles as they are. None: the rule off.
PROJ_WAVE_PER_SM = 3
PROJ_CONFIG_WAVE = {"BLOCK_M": 128, "BLOCK_K": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3}


# Vim-B's width (above PROJ_LARGE_CHANNELS) keeps PROJ_WIDE_TABLE: spread over whole waves of the large tiles (two
# programs per SM) or of PROJ_CONFIG_WAVE, its rows came within 1.3 us of the table's tiles at 109-186 tokens (the
# merged schedule's sum 1,268.6 against 1,271.2 us; thirty-fifth session call 2, H200, proj_balance_gpu.py --dims
# 1536). Session 34's rule for that width had been measured against a kernel whose runtime ROWS cost these tiles
# registers (168 -> 220 under Triton 3.6) and a third more time.


def _whole_waves(rows: int, per_wave: int) -> dict:
    """Tiles whose programs (``per_wave`` of one direction in a wave) cover ``rows`` in the fewest whole waves:
    PROJ_CONFIG_LARGE where every program takes a whole tile, else PROJ_CONFIG_WAVE with ROWS, the rows per program
    rounded up to 8."""
    block_m = PROJ_CONFIG_WAVE["BLOCK_M"]
    waves = cdiv(rows, per_wave * block_m)
    rpp = cdiv(cdiv(rows, waves * per_wave), 8) * 8
    return PROJ_CONFIG_LARGE if rpp >= block_m else dict(PROJ_CONFIG_WAVE, ROWS=rpp)


def proj_config(rows: int, channels: int, hopper_sms: int | None = None) -> dict:
    """The tiles :func:`bidir_scan_inputs` takes for ``rows`` rows of ``channels`` input channels;
    ``hopper_sms``: the SM count of a Hopper GPU (compute capability 9.x) to run on, for the whole-wave rule
    above (None: not Hopper, or not known)."""
    if channels <= PROJ_NARROW_CHANNELS and PROJ_NARROW_ROWS[0] <= rows <= PROJ_NARROW_ROWS[1]:
        return PROJ_CONFIG_NARROW
    if channels <= PROJ_LARGE_CHANNELS:
        if rows < PROJ_LARGE_ROWS:
            return PROJ_CONFIG
        if hopper_sms is None or not PROJ_WAVE_PER_SM or channels <= PROJ_NARROW_CHANNELS:
            return PROJ_CONFIG_LARGE
        return _whole_waves(rows, PROJ_WAVE_PER_SM * hopper_sms // 2)
    return next(cfg for least, cfg in PROJ_WIDE_TABLE if rows >= least)


def hopper_sms(device: torch.device) -> int | None:
    """The SM count of ``device`` where it is a Hopper GPU (the whole-wave rule of :func:`proj_config`), else
    None."""
    if device.type != "cuda":
        return None
    sms, major = device_sms(device)
    return sms if major == 9 else None


def is_available() -> bool:
    return _HAS_TRITON


if _HAS_TRITON:
    @triton.jit
    def _bidir_proj_kernel(u_f, u_b, wx_f, wx_b, wdt_f, wdt_b, xdbl_ptr, delta_ptr, M, D, s_wx, s_wdt,
                           RPP: tl.constexpr, R: tl.constexpr, N2: tl.constexpr, R_PAD: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
                           BO: tl.constexpr, PDL: tl.constexpr = False):
        """Rows ``program_id(0) * RPP ...`` (RPP <= BLOCK_M of them, the rest of the tile masked) of direction
        ``program_id(1)`` (0: u_f / wx_f / wdt_f, 1: the ``_b`` ones). u: [M, D] contiguous; wx: [R + N2, D] (row
        stride s_wx, unit column stride); wdt: [D, R] (row stride s_wdt); outputs xdbl [2, M, BO + N2] (dt in
        columns [0, R), zeros in [R, BO), B and C in [BO, BO + N2): :func:`xdbl_row`; R <= BO <= R_PAD) and delta
        [2, M, D], contiguous, u's dtype."""
        follow_previous(PDL)  # under PDL: wait for the previous kernel, then release the next
        pid = tl.program_id(0)
        d = tl.program_id(1)
        if d == 0:
            u = u_f
            wx = wx_f
            wdt = wdt_f
        else:
            u = u_b
            wx = wx_b
            wdt = wdt_b
        dt = xdbl_ptr.dtype.element_ty
        loc = tl.arange(0, BLOCK_M)
        # RPP a constexpr, rows in int32 before the widening: a runtime RPP, or rows formed in int64, cost the
        # tiles 26-52 more registers under Triton 3.6 (sm_90: 128 x 64 x 64 in 4 warps 168 -> 220, so 2 programs
        # per SM instead of 3) and Vim-B's table tilings a third more time (thirty-fifth session, call 1)
        if RPP == BLOCK_M:
            rows = (pid * BLOCK_M + loc).to(tl.int64)
            mrow = rows < M
        else:
            rows32 = pid * RPP + loc
            mrow = (loc < RPP) & (rows32 < M)
            rows = rows32.to(tl.int64)
        kk = tl.arange(0, BLOCK_K)
        jr = tl.arange(0, R_PAD)
        jb = tl.arange(0, N2)
        mr = jr < R
        acc_r = tl.zeros([BLOCK_M, R_PAD], tl.float32)
        acc_bc = tl.zeros([BLOCK_M, N2], tl.float32)
        for k0 in range(0, D, BLOCK_K):
            k = k0 + kk
            mk = k < D
            a = tl.load(u + rows[:, None] * D + k[None, :], mask=mrow[:, None] & mk[None, :], other=0.0)
            w_r = tl.load(wx + jr[:, None] * s_wx + k[None, :], mask=mr[:, None] & mk[None, :], other=0.0).to(dt)
            w_bc = tl.load(wx + (R + jb)[:, None] * s_wx + k[None, :], mask=mk[None, :], other=0.0).to(dt)
            acc_r = tl.dot(a, tl.trans(w_r), acc_r)
            acc_bc = tl.dot(a, tl.trans(w_bc), acc_bc)
        x_r = acc_r.to(dt)  # columns R..R_PAD-1 are 0 (their weight rows were masked): stored as the padding
        W: tl.constexpr = BO + N2
        out_x = xdbl_ptr + (d * M + rows)[:, None] * W
        tl.store(out_x + jr[None, :], x_r, mask=mrow[:, None] & (jr < BO)[None, :])
        tl.store(out_x + BO + jb[None, :], acc_bc.to(dt), mask=mrow[:, None])
        nn = tl.arange(0, BLOCK_N)
        out_d = delta_ptr + (d * M + rows)[:, None] * D
        for n0 in range(0, D, BLOCK_N):
            n = n0 + nn
            mn = n < D
            w2 = tl.load(wdt + n[:, None] * s_wdt + jr[None, :], mask=mn[:, None] & mr[None, :], other=0.0).to(dt)
            tl.store(out_d + n[None, :], tl.dot(x_r, tl.trans(w2)).to(dt), mask=mrow[:, None] & mn[None, :])


# The scan reads a token's B / C row with one vector load, and prefetches the next chunk's inputs, only where every
# row starts on a 16-byte boundary (rmeeto.ops.triton.scan._bc_mode's mode 2). x_dbl rows of R + 2N 16-bit columns
# put B at column R: 16-byte aligned at Vim-S's and Vim-B's dt_rank (24, 48), 8-byte at Vim-Ti's 12, where the scan
# fell back to 32-bit pairs without prefetch. So B and C start at R rounded up to 8 columns (:func:`xdbl_row`), the
# columns between written as zeros. Fortieth session (H200, benchmarks/scan_align_gpu.py, graphed, both directions,
# batch 128, the same bits): Vim-Ti's scan 248.4 -> 188.5 us at 197 tokens, 187.8 -> 141.9 at 147, 99.5 -> 78.0 at
# 76; whole graphed Vim-Ti (bench_set.py --set proj.ALIGN_BC=...) 15,008.6 / 17,477.8 -> 18,367.9 / 21,151.0 img/s
# unmerged / merged. Vim-S's and Vim-B's rows are unchanged (their dt_rank is a multiple of 8).
ALIGN_BC = True


def xdbl_row(R: int, n2: int) -> tuple[int, int]:
    """(first column of B, row width) of the x_dbl rows the kernel writes for dt_rank ``R`` and ``n2`` = 2 x
    d_state B / C columns (16-bit): dt in columns [0, R), B and C in [bo, bo + n2), zeros between; bo is R
    rounded up to a multiple of 8 (16 bytes; R itself with ALIGN_BC off)."""
    bo = -(-R // 8) * 8 if ALIGN_BC else R
    return bo, bo + n2


def xdbl_parts(xdbl: Tensor, R: int, d_state: int) -> tuple[Tensor, Tensor, Tensor]:
    """(dt, B, C) views of the kernel's x_dbl output (:func:`xdbl_row`'s columns: B and C its last 2 x d_state, so
    the views follow the width the tensor was made with, whatever ALIGN_BC says now)."""
    bo = xdbl.shape[-1] - 2 * d_state
    return xdbl[..., :R], xdbl[..., bo:bo + d_state], xdbl[..., bo + d_state:]


def bidir_scan_inputs(u_f: Tensor, u_b: Tensor, wx_f: Tensor, wx_b: Tensor, wdt_f: Tensor, wdt_b: Tensor,
                      d_state: int, config: dict | None = None) -> tuple[Tensor, Tensor]:
    """u_f, u_b [batch, length, D] (16-bit, contiguous, same shape); wx_* [R + 2 * d_state, D]; wdt_* [D, R]
    (unit column stride) -> (x_dbl [2, batch, length, W], delta [2, batch, length, D]) in u's dtype: ``u_d @
    wx_d.T`` and ``dt_d @ wdt_d.T`` for d = forward, backward, where x_dbl's rows hold dt, B and C at
    :func:`xdbl_row`'s columns (W its width; :func:`xdbl_parts` takes them apart)."""
    batch, length, D = u_f.shape
    R = wdt_f.shape[1]
    n2 = 2 * d_state
    M = batch * length
    bo, width = xdbl_row(R, n2)
    xdbl = torch.empty(2, batch, length, width, device=u_f.device, dtype=u_f.dtype)
    delta = torch.empty(2, batch, length, D, device=u_f.device, dtype=u_f.dtype)
    if M == 0:
        return xdbl, delta
    grid, tail, meta = spec(M, D, R, n2, wx_f.stride(0), wdt_f.stride(0), config, hopper_sms(u_f.device), bo)
    launch(_bidir_proj_kernel, grid, u_f.device, u_f, u_b, wx_f, wx_b, wdt_f, wdt_b, xdbl, delta, *tail, **meta)
    return xdbl, delta


def spec(M: int, D: int, R: int, n2: int, s_wx: int, s_wdt: int, config: dict | None = None,
         sms: int | None = None, bo: int | None = None) -> tuple[tuple, tuple, dict]:
    """(grid, scalar arguments, constexprs and launch options) of the kernel over M rows of D channels, dt_rank
    R, n2 = 2 * d_state, x_proj / dt_proj row strides s_wx / s_wdt; ``config`` the tiles (default
    :func:`proj_config`, with ``sms`` from :func:`hopper_sms`); ``bo`` B's column in x_dbl's rows (default
    :func:`xdbl_row`'s; a caller that allocates x_dbl passes the one it allocated for). The kernel's tensors (u_f,
    u_b, wx_f, wx_b, wdt_f, wdt_b, xdbl, delta) come first."""
    r_pad = max(16, next_pow2(R))  # the dt accumulator's columns; those past R are zeros, stored as the padding
    if bo is None:
        bo = xdbl_row(R, n2)[0]
    if not R <= bo <= r_pad:
        raise ValueError(f"proj: B's column {bo} must lie between dt_rank {R} and its padded width {r_pad}")
    cfg = proj_config(M, D, sms) if config is None else config
    block_m = cfg["BLOCK_M"]
    rpp = cfg.get("ROWS") or block_m  # rows per program: a tile's first rows, the rest masked
    if not 0 < rpp <= block_m:
        raise ValueError(f"proj tiles: ROWS={rpp} rows per program must be 1..BLOCK_M={block_m}")
    meta = dict(R=R, N2=n2, R_PAD=r_pad, BLOCK_M=block_m, BLOCK_K=cfg["BLOCK_K"],
                BLOCK_N=cfg["BLOCK_N"], RPP=rpp, BO=bo, num_warps=cfg["num_warps"],
                num_stages=cfg["num_stages"], **pdl_meta())
    if cfg.get("maxnreg"):
        meta["maxnreg"] = cfg["maxnreg"]
    return (cdiv(M, rpp), 2), (M, D, s_wx, s_wdt), meta

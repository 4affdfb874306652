"""Triton kernel of the bidirectional mixer's last step in inference: the two scan directions' outputs added,
then out_proj, in one launch.

A Vim block ends with

    y = y_f + y_b                    # [batch, length, D], rounded to the activations' dtype
    out = y @ W_out.T                # [batch, length, C], out_proj (Vim's has no bias)

an elementwise kernel (reads both directions' planes, writes y) and a cuBLAS GEMM (reads y back): at Vim-S
widths the add alone moves twice the bytes the GEMM moves. :func:`sum_out_proj` does both in one kernel: a
program takes BLOCK_M rows and BLOCK_N output channels, and per step of BLOCK_K input channels loads the rows of
both planes, adds them in float32 and rounds the sum to the activations' dtype (the bits ``torch.add`` gives),
then accumulates ``sum @ W.T`` in float32; y never goes to memory. Output tiles in groups of GROUP_M row tiles
(the weight tiles a group reads stay in L2). Same roundings as the two PyTorch ops, the GEMM's sums in another
order than cuBLAS's: equal to rounding, not bit for bit (tests/ops/test_interpreted.py, tests/ops/test_gpu_outproj.py).

Where it pays (``benchmarks/bench_outproj_gpu.py``, H200, batch 128, graphed, the add + cuBLAS against this kernel
at every token count of the merged schedules): Vim-S (768 -> 384 channels) 54.7 -> 48.7 us at 197 tokens, 25.5 ->
20.0 at 76; Vim-Ti (384 -> 192) 612 -> 568 us over an unmerged forward's 24 layers, 548 -> 465 over a merged one's;
Vim-B (1536 -> 768) lost at every token count (137.0 against 164-183 us at 197: cuBLAS's GEMM is compute-bound
there and ahead of these tiles), so :func:`fits` takes only inputs of up to ``MAX_K`` channels. Wider inputs on
Hopper take the persistent TMA tiles of :mod:`rmeeto.ops.triton.tma_gemm` instead, the sum in their prologue
(:func:`tma_fits`: Vim-B's merged layers of up to 175 tokens at batch 128, where those were measured ahead).
16-bit activations and weights of their dtype only; no gradient (:mod:`rmeeto.ops.outproj` takes it only when none
has to flow).
"""

from __future__ import annotations

from typing import Optional

import torch

from rmeeto.ops.triton import tma_gemm
from rmeeto.ops.triton._launch import cdiv, launch, pdl_meta
from rmeeto.ops.triton._pdl import follow_previous

try:
    import triton
    import triton.language as tl

    _HAS_TRITON = True
except Exception:  # pragma: no cover - depends on the install
    _HAS_TRITON = False

Tensor = torch.Tensor

__all__ = ["is_available", "sum_out_proj", "spec", "config_for", "fits", "tma_fits", "kernel_for",
           "weights_fit", "OUTPROJ_CONFIG", "TMA_CONFIG", "TMA_MAX_K", "TMA_MAX_ROWS",
           "OUTPROJ_SMALL_CONFIG", "MAX_K"]

# BLOCK_M rows x BLOCK_N output channels per program, BLOCK_K input channels per step, GROUP_M row tiles per group.
# benchmarks/bench_outproj_gpu.py (session 25, H200, batch 128, graphed, summed over each schedule's 24 layers): the
# best of nine tilings for both widths. Vim-Ti (384 -> 192): merged 548 -> 465 us per forward, unmerged 612 -> 568;
# Vim-S (768 -> 384): merged 975 -> 829, unmerged 1,312 -> 1,169. The same tiles in 8 warps lost to the add +
# cuBLAS at Vim-S (1,401 us unmerged).
OUTPROJ_CONFIG = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4, "num_stages": 3}
# Fewer rows at up to OUTPROJ_SMALL_K input channels: smaller tiles (more programs on the SMs). Session 30 (H200,
# bench_outproj_gpu.py --table, graphed, per call, 128 x L rows): Vim-Ti (384 -> 192) at 76 tokens 12.1 -> 10.4 us,
# at 147 18.6 -> 17.9; at 152 18.7 / 18.6 and from 157 on the default tiles ahead (18.9 against 19.1). At Vim-S
# widths (768 -> 384) these tiles lost at every token count (76: 28.0 against 19.7).
OUTPROJ_SMALL_CONFIG = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4, "num_stages": 3}
OUTPROJ_SMALL_ROWS = 128 * 150  # up to this many rows
OUTPROJ_SMALL_K = 384
MAX_K = 768  # above (Vim-B's 1536), the add + cuBLAS was faster than these tiles
# Wider inputs (Vim-B's 1536 channels) on Hopper: the persistent TMA tiles of rmeeto.ops.triton.tma_gemm with the sum
# in their prologue, for up to TMA_MAX_ROWS rows. Session 25 (benchmarks/gemm_ab_gpu.py, H200, graphed, per call,
# the add + cuBLAS against those tiles, 128 x 256 x 64 in 8 warps): Vim-B ahead of the add + cuBLAS at 175 tokens and
# fewer but three counts (175: 107.0 against 135.2 us; 131: 86.9 / 95.7; 76: 54.1 / 60.5; behind at 142, 109, 98),
# behind at 197 (146.8 / 137.6), level at 186.
TMA_CONFIG = {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 3}
TMA_MAX_K = 2048
TMA_MAX_ROWS = 128 * 175


def config_for(M: int, K: int) -> dict:
    """The tiles the kernel takes for M rows of K input channels."""
    return OUTPROJ_SMALL_CONFIG if M <= OUTPROJ_SMALL_ROWS and K <= OUTPROJ_SMALL_K else OUTPROJ_CONFIG


def is_available() -> bool:
    return _HAS_TRITON


def fits(k: int, n: int) -> bool:
    """Whether the kernel serves out_proj with ``k`` input and ``n`` output channels (where it was measured
    ahead of the add + cuBLAS): up to MAX_K input channels."""
    return 0 < k <= MAX_K and n > 0


def tma_fits(k: int, n: int, rows: int) -> bool:
    """Whether the TMA tiles serve out_proj with ``k`` input and ``n`` output channels over ``rows`` rows: above
    MAX_K (where the plain tiles stop) up to TMA_MAX_K input channels, up to TMA_MAX_ROWS rows (where they were
    measured ahead of the add + cuBLAS), both channel counts multiples of 8 (16-byte rows for the descriptors)."""
    return MAX_K < k <= TMA_MAX_K and k % 8 == 0 and n > 0 and n % 8 == 0 and rows <= TMA_MAX_ROWS


def kernel_for(dtype: torch.dtype, weight: Tensor, bias, rows: int, device: torch.device) -> Optional[str]:
    """Which kernel serves ``rows`` rows of activations of ``dtype`` on ``device`` with this out_proj: "tiles"
    (:func:`fits`: 16-bit activations, the weight of their dtype, 2-D with unit column stride, no bias), "tma"
    (:func:`tma_fits`, a device with TMA, the weight also contiguous and 16-byte aligned), or None (the add +
    cuBLAS). (The caller checks the switch and that no gradient is wanted: :mod:`rmeeto.ops.outproj`, the mixer
    plans.)"""
    if not (dtype in (torch.float16, torch.bfloat16) and bias is None and weight.dtype == dtype
            and weight.dim() == 2 and weight.stride(1) == 1):
        return None
    n, k = weight.shape
    if fits(k, n):
        return "tiles"
    if (tma_gemm.is_available() and tma_fits(k, n, rows) and tma_gemm.device_fits(device)
            and weight.is_contiguous() and tma_gemm.aligned(weight)):
        return "tma"
    return None


def weights_fit(dtype: torch.dtype, weight: Tensor, bias, rows: int, device: torch.device) -> bool:
    """Whether a kernel of this module serves these activations with this out_proj (:func:`kernel_for`)."""
    return kernel_for(dtype, weight, bias, rows, device) is not None


if _HAS_TRITON:
    @triton.jit
    def _sum_out_proj_kernel(y_ptr, w_ptr, out_ptr, M, N, K, s_dir, s_w,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                             GROUP_M: tl.constexpr, EVEN_K: tl.constexpr, PDL: tl.constexpr = False):
        """out[M, N] = round(y[0] + y[1]) @ w[N, K].T for output tile ``program_id(0)`` (grouped order). y: two
        [M, K] planes with unit channel stride and row stride K, the second ``s_dir`` elements after the first;
        w: row stride ``s_w``, unit column stride; out [M, N] contiguous, y's dtype. EVEN_K: K % BLOCK_K == 0."""
        follow_previous(PDL)  # under PDL: wait for the previous kernel, then release the next
        pid = tl.program_id(0)
        num_m = tl.cdiv(M, BLOCK_M)
        num_n = tl.cdiv(N, BLOCK_N)
        in_group = GROUP_M * num_n
        first_m = (pid // in_group) * GROUP_M
        group_m = min(num_m - first_m, GROUP_M)
        pid_m = first_m + (pid % in_group) % group_m
        pid_n = (pid % in_group) // group_m
        dt = out_ptr.dtype.element_ty
        rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mr = rows < M
        mc = cols < N
        kk = tl.arange(0, BLOCK_K)
        a_ptr = y_ptr + rows[:, None] * K + kk[None, :]
        b_ptr = w_ptr + cols[None, :] * s_w + kk[:, None]
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            if EVEN_K:
                ma = mr[:, None]
                mb = mc[None, :]
            else:
                ma = mr[:, None] & (k0 + kk < K)[None, :]
                mb = mc[None, :] & (k0 + kk < K)[:, None]
            a = tl.load(a_ptr + k0, mask=ma, other=0.0).to(tl.float32)
            a = (a + tl.load(a_ptr + s_dir + k0, mask=ma, other=0.0).to(tl.float32)).to(dt)
            acc = tl.dot(a, tl.load(b_ptr + k0, mask=mb, other=0.0), acc)
        tl.store(out_ptr + rows[:, None] * N + cols[None, :], acc.to(dt), mask=mr[:, None] & mc[None, :])


def spec(M: int, N: int, K: int, s_dir: int, s_w: int, config: dict | None = None) -> tuple[tuple, tuple, dict]:
    """(grid, scalar arguments, constexprs and launch options) of the kernel over M rows, N output and K input
    channels, the planes ``s_dir`` elements apart, the weight's row stride ``s_w``; ``config`` the tiles (default
    :func:`config_for`). The kernel's tensors (y, w, out) come first."""
    cfg = config_for(M, K) if config is None else config
    bm, bn, bk = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]
    meta = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=cfg["GROUP_M"], EVEN_K=K % bk == 0,
                num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **pdl_meta())
    return (cdiv(M, bm) * cdiv(N, bn),), (M, N, K, s_dir, s_w), meta


def sum_out_proj(y: Tensor, w: Tensor, config: dict | None = None) -> Tensor:
    """y [2, batch, length, K] (16-bit; each direction's plane contiguous, planes any distance apart), w [N, K] of
    y's dtype with unit column stride -> ``round(y[0] + y[1]) @ w.T`` [batch, length, N] in y's dtype. Widths past
    MAX_K (:func:`tma_fits`) take the TMA tiles: then both planes and w (contiguous) 16-byte aligned."""
    _, batch, length, K = y.shape
    N = w.shape[0]
    M = batch * length
    out = torch.empty(batch, length, N, device=y.device, dtype=y.dtype)
    if M == 0:
        return out
    if not fits(K, N):
        tma_gemm.Gemm(M, N, K, y.device, TMA_CONFIG if config is None else config, two_a=True)(y[0], y[1], w, out)
        return out
    grid, tail, meta = spec(M, N, K, y.stride(0), w.stride(0), config)
    launch(_sum_out_proj_kernel, grid, y.device, y, w, out, *tail, **meta)
    return out

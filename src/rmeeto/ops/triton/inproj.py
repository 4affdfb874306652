"""The mixer's first GEMM in inference, on Hopper: in_proj as persistent tiles over TMA descriptors.

A Vim block's mixer starts with

    xz = hidden @ W_in.T             # [batch, length, C] -> [batch, length, 2 * D], in_proj (Vim's has no bias)

a GEMM with few input channels (Vim-Ti: 192 in, 768 out) that moves more bytes than it computes: cuBLAS's kernel
for it (plus the memset cuBLAS adds before each call) leaves the H200 idle between its waves of tiles.
:func:`in_proj` runs it as the persistent TMA tiles of :mod:`rmeeto.ops.triton.tma_gemm` (one program per SM
walking the output tiles). float32 sums in another order than cuBLAS's: equal to rounding, not bit for bit
(tests/ops/test_interpreted.py, tests/ops/test_gpu_inproj.py).

Where it pays (``benchmarks/gemm_ab_gpu.py --ops in``, session 32, H200, batch 128, graphed, per call at every
token count of the paper schedules; raw ``results/s32/call1``): Vim-Ti 20.3 against cuBLAS's 20.9 us at 197 tokens,
17.7 / 18.9 at 172, 15.4 / 16.5 at 147, 10.2 / 10.3 at 76: summed over a forward, 486 against 502 us unmerged and
417 against 442 merged. At Vim-S's widths (384 -> 1536) cuBLAS was ahead at 8 of 12 token counts (56.1 against
53.2 us at 197). Whole graphed models (call 3) told more than those times: Vim-S 0.2% slower unmerged and 0.35%
faster merged with the tiles at every layer, Vim-B 0.4-0.5% slower either way, so :func:`fits` takes up to
``MAX_K`` input channels, and above ``WIDE_K`` only up to ``WIDE_MAX_ROWS`` rows (fewer than 197 tokens at batch
128). The same tiles with descriptors made on the device (``tl.make_tensor_descriptor``, no host work) were
2-2.6 us per call slower than cuBLAS; with host-made ones, each launch fills three descriptors on the host
(:mod:`rmeeto.ops.triton._launch` keeps the rest of the launch cached). Needs compute capability 9.0 or more (TMA);
16-bit activations and weights of their dtype, rows and weights 16-byte aligned; no bias, no gradient
(:mod:`rmeeto.ops.inproj` takes it only where none has to flow).
"""

from __future__ import annotations

from typing import Optional

import torch

from rmeeto.ops.triton import tma_gemm

Tensor = torch.Tensor

__all__ = ["is_available", "in_proj", "fits", "weights_fit", "INPROJ_CONFIG", "MAX_K",
           "WIDE_K", "WIDE_MAX_ROWS"]

# BLOCK_M rows x BLOCK_N output channels per tile, BLOCK_K input channels per step, GROUP_M row tiles per group.
# Session 32, call 1 (gemm_ab_gpu.py --models Ti --ops in --backends cublas,tma,tmadev): the best of twelve tilings
# at 11 of Vim-Ti's 12 token counts (64 x 256 x 64 in 4 warps at one, by 0.1 us).
INPROJ_CONFIG = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4, "num_stages": 4}
MAX_K = 512  # Vim-Ti's 192 and Vim-S's 384; at Vim-B's 768 the whole model was 0.4-0.5% slower (call 3)
# Above WIDE_K input channels (Vim-S) only for up to WIDE_MAX_ROWS rows: whole graphed Vim-S (call 3) with the tiles
# at every layer was 0.2% slower unmerged (197 tokens) and 0.35% faster merged. Thirty-eighth session (call 1,
# `bench_set.py --set inproj.WIDE_MAX_ROWS=...`, alternating processes): up to 128 x 186 rows (every merged layer of
# the batch-128 schedule) against up to 128 x 131, merged Vim-S graphed 12,588.9 / 12,586.1 against 12,569.4 /
# 12,565.5 img/s (+0.16%; the cuBLAS memsets and the idle time around them go), unmerged unchanged (cuBLAS at 197).
WIDE_K = 256
WIDE_MAX_ROWS = 128 * 186


def is_available() -> bool:
    return tma_gemm.is_available()


def fits(k: int, n: int, rows: int) -> bool:
    """Whether the kernel serves in_proj with ``k`` input and ``n`` output channels over ``rows`` rows (batch x
    tokens): where it was measured ahead of cuBLAS, up to MAX_K input channels, and above WIDE_K only up to
    WIDE_MAX_ROWS rows; both channel counts multiples of 8 (16-byte rows for the descriptors)."""
    return (0 < k <= MAX_K and k % 8 == 0 and n > 0 and n % 8 == 0
            and (k <= WIDE_K or rows <= WIDE_MAX_ROWS))


def weights_fit(dtype: torch.dtype, weight: Tensor, bias, rows: int) -> bool:
    """Whether the kernel serves ``rows`` rows of activations of ``dtype`` with this in_proj weight: 16-bit
    activations, the weight of their dtype, contiguous, 16-byte aligned, a width and row count :func:`fits`
    takes, no bias. (The caller checks the switch, the device (:func:`rmeeto.ops.triton.tma_gemm.device_fits`) and
    that no gradient is
    wanted: :mod:`rmeeto.ops.inproj`, the mixer plans.)"""
    return (is_available() and dtype in (torch.float16, torch.bfloat16) and bias is None and weight.dtype == dtype
            and weight.dim() == 2 and weight.is_contiguous() and weight.data_ptr() % 16 == 0
            and fits(weight.shape[1], weight.shape[0], rows))


def in_proj(x: Tensor, w: Tensor, config: Optional[dict] = None) -> Tensor:
    """x [..., K] (16-bit, contiguous, 16-byte aligned), w [N, K] of x's dtype (contiguous, aligned; a width
    :func:`fits` takes) -> ``x @ w.T`` [..., N] in x's dtype; ``config`` the tiles (default INPROJ_CONFIG)."""
    K = x.shape[-1]
    N = w.shape[0]
    M = x.numel() // K if K else 0
    out = torch.empty(*x.shape[:-1], N, device=x.device, dtype=x.dtype)
    if M == 0:
        return out
    tma_gemm.Gemm(M, N, K, x.device, INPROJ_CONFIG if config is None else config)(x, None, w, out)
    return out

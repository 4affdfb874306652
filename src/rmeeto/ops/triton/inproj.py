"""Triton kernel of the mixer's first GEMM in inference, on Hopper: in_proj as persistent tiles over TMA descriptors.

A Vim block's mixer starts with

    xz = hidden @ W_in.T             # [batch, length, C] -> [batch, length, 2 * D], in_proj (Vim's has no bias)

a GEMM with few input channels (Vim-Ti: 192 in, 768 out) that moves more bytes than it computes: cuBLAS's kernel
for it (plus the memset cuBLAS adds before each call) leaves the H200 idle between its waves of tiles.
:func:`in_proj` launches one program per SM (at most one per output tile); each walks the output tiles in grouped
order (GROUP_M row tiles share their weight tiles in L2), loading its operands with the tensor memory accelerator
(host-made descriptors, ``triton.tools.tensor_descriptor.TensorDescriptor``), and writes each tile with a TMA
store while the next tile's loads are in flight. Rows past M read as zeros and are not written. float32 sums in
another order than cuBLAS's: equal to rounding, not bit for bit (tests/ops/test_interpreted.py,
tests/ops/test_gpu_inproj.py).

Where it pays (``benchmarks/gemm_ab_gpu.py --ops in``, session 32, H200, batch 128, graphed, per call at every
token count of the paper schedules; raw ``results/s32/call1``): Vim-Ti 20.3 against cuBLAS's 20.9 us at 197 tokens,
17.7 / 18.9 at 172, 15.4 / 16.5 at 147, 10.2 / 10.3 at 76: summed over a forward, 486 against 502 us unmerged and
417 against 442 merged. At Vim-S's widths (384 -> 1536) cuBLAS was ahead at 8 of 12 token counts (56.1 against
53.2 us at 197). Whole graphed models (call 3) told more than those times: Vim-S 0.2% slower unmerged and 0.35%
faster merged with the tiles at every layer, Vim-B 0.4-0.5% slower either way, so :func:`fits` takes up to
``MAX_K`` input channels, and above ``WIDE_K`` only short sequences. The same tiles with descriptors made on the
device (``tl.make_tensor_descriptor``, no host work) were 2-2.6 us per call slower than cuBLAS; with host-made
ones, each launch fills three descriptors on the host (:mod:`rmeeto.ops.triton._launch` keeps the rest of the
launch cached). Needs compute capability 9.0 or more (TMA); 16-bit activations and weights of their dtype, rows and
weights 16-byte aligned; no bias, no gradient (:mod:`rmeeto.ops.inproj` takes it only where none has to flow).
"""

from __future__ import annotations

from typing import Optional

import torch

from rmeeto.ops.triton._launch import cdiv, launch, pdl_meta
from rmeeto.ops.triton._pdl import follow_previous

try:
    import triton
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor

    _HAS_TRITON = True
except Exception:  # pragma: no cover - depends on the install (a Triton without host TMA descriptors too)
    _HAS_TRITON = False

Tensor = torch.Tensor

__all__ = ["is_available", "in_proj", "spec", "descriptors", "fits", "weights_fit", "device_fits", "INPROJ_CONFIG",
           "MAX_K"]

# BLOCK_M rows x BLOCK_N output channels per tile, BLOCK_K input channels per step, GROUP_M row tiles per group.
# Session 32, call 1 (gemm_ab_gpu.py --models Ti --ops in --backends cublas,tma,tmadev): the best of twelve tilings
# at 11 of Vim-Ti's 12 token counts (64 x 256 x 64 in 4 warps at one, by 0.1 us).
INPROJ_CONFIG = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4, "num_stages": 4}
MAX_K = 512  # Vim-Ti's 192 and Vim-S's 384; at Vim-B's 768 the whole model was 0.4-0.5% slower (call 3)
# Above WIDE_K input channels (Vim-S) only for up to WIDE_MAX_ROWS rows: whole graphed Vim-S (call 3) with the tiles
# at every layer was 0.2% slower unmerged (197 tokens) and 0.35% faster merged.
WIDE_K = 256
WIDE_MAX_ROWS = 128 * 131

_SMS: dict = {}  # device index -> SM count
_CAPABLE: dict = {}  # device index -> compute capability >= 9.0


def is_available() -> bool:
    return _HAS_TRITON


def fits(k: int, n: int, rows: int) -> bool:
    """Whether the kernel serves in_proj with ``k`` input and ``n`` output channels over ``rows`` rows (batch x
    tokens): where it was measured ahead of cuBLAS, up to MAX_K input channels, and above WIDE_K only up to
    WIDE_MAX_ROWS rows; both channel counts multiples of 8 (16-byte rows for the descriptors)."""
    return (0 < k <= MAX_K and k % 8 == 0 and n > 0 and n % 8 == 0
            and (k <= WIDE_K or rows <= WIDE_MAX_ROWS))


def weights_fit(dtype: torch.dtype, weight: Tensor, bias, rows: int) -> bool:
    """Whether the kernel serves ``rows`` rows of activations of ``dtype`` with this in_proj weight: 16-bit
    activations, the weight of their dtype, contiguous, 16-byte aligned, a width and row count :func:`fits`
    takes, no bias. (The caller checks the switch, the device (:func:`device_fits`) and that no gradient is
    wanted: :mod:`rmeeto.ops.inproj`, the mixer plans.)"""
    return (_HAS_TRITON and dtype in (torch.float16, torch.bfloat16) and bias is None and weight.dtype == dtype
            and weight.dim() == 2 and weight.is_contiguous() and weight.data_ptr() % 16 == 0
            and fits(weight.shape[1], weight.shape[0], rows))


def device_fits(device: torch.device) -> bool:
    """A CUDA device with the tensor memory accelerator (compute capability 9.0 or more), asked once per device.
    CPU tensors (they reach the kernel only under TRITON_INTERPRET=1, which runs descriptors in software) fit."""
    if device.type != "cuda":
        return device.type == "cpu"
    index = device.index if device.index is not None else torch.cuda.current_device()
    ok = _CAPABLE.get(index)
    if ok is None:
        ok = _CAPABLE[index] = torch.cuda.get_device_capability(index) >= (9, 0)
    return ok


def _programs(device: torch.device, tiles: int) -> int:
    """One program per SM, at most one per tile (4 under the interpreter)."""
    if device.type != "cuda":
        return min(4, tiles)
    index = device.index if device.index is not None else torch.cuda.current_device()
    sms = _SMS.get(index)
    if sms is None:
        sms = _SMS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return min(sms, tiles)


if _HAS_TRITON:
    @triton.jit
    def _in_proj_kernel(a_desc, w_desc, c_desc, M, N, K,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                        NUM_PROGS: tl.constexpr, PDL: tl.constexpr = False):
        """c[M, N] = a[M, K] @ w[N, K].T over descriptors of blocks [BLOCK_M, BLOCK_K], [BLOCK_N, BLOCK_K] and
        [BLOCK_M, BLOCK_N]: program ``program_id(0)`` of NUM_PROGS takes every NUM_PROGS-th output tile in grouped
        order, float32 sums over steps of BLOCK_K, stored in c's dtype."""
        follow_previous(PDL)  # under PDL: wait for the previous kernel, then release the next
        num_m = tl.cdiv(M, BLOCK_M)
        num_n = tl.cdiv(N, BLOCK_N)
        in_group = GROUP_M * num_n
        for tile in tl.range(tl.program_id(0), num_m * num_n, NUM_PROGS, flatten=True):
            first_m = (tile // in_group) * GROUP_M
            group_m = min(num_m - first_m, GROUP_M)
            row = (first_m + (tile % in_group) % group_m) * BLOCK_M
            col = ((tile % in_group) // group_m) * BLOCK_N
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for k in range(0, K, BLOCK_K):
                acc = tl.dot(a_desc.load([row, k]), w_desc.load([col, k]).T, acc)
            c_desc.store([row, col], acc.to(c_desc.dtype))


def spec(M: int, N: int, K: int, device: torch.device, config: Optional[dict] = None) -> tuple[tuple, tuple, dict]:
    """(grid, scalar arguments, constexprs and launch options) of the kernel over M rows, N output and K input
    channels on ``device``; ``config`` the tiles (default INPROJ_CONFIG). The descriptors (:func:`descriptors`)
    come first."""
    cfg = INPROJ_CONFIG if config is None else config
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    progs = _programs(device, cdiv(M, bm) * cdiv(N, bn))
    meta = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=cfg["BLOCK_K"], GROUP_M=cfg["GROUP_M"], NUM_PROGS=progs,
                num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **pdl_meta())
    return (progs,), (M, N, K), meta


def descriptors(a: Tensor, w: Tensor, c: Tensor, M: int, meta: dict) -> tuple:
    """The kernel's three descriptors over M rows for ``a`` (M x K), ``w`` [N, K] and ``c`` (M x N), each
    contiguous and 16-byte aligned (``a`` and ``c`` of any shape with those sizes), with the blocks of ``meta``
    (:func:`spec`'s)."""
    bm, bn, bk = meta["BLOCK_M"], meta["BLOCK_N"], meta["BLOCK_K"]
    N, K = w.shape
    return (TensorDescriptor(a, [M, K], [K, 1], [bm, bk]), TensorDescriptor(w, [N, K], [K, 1], [bn, bk]),
            TensorDescriptor(c, [M, N], [N, 1], [bm, bn]))


def in_proj(x: Tensor, w: Tensor, config: Optional[dict] = None) -> Tensor:
    """x [..., K] (16-bit, contiguous, 16-byte aligned), w [N, K] of x's dtype (contiguous, aligned; a width
    :func:`fits` takes) -> ``x @ w.T`` [..., N] in x's dtype."""
    K = x.shape[-1]
    N = w.shape[0]
    M = x.numel() // K if K else 0
    out = torch.empty(*x.shape[:-1], N, device=x.device, dtype=x.dtype)
    if M == 0:
        return out
    grid, tail, meta = spec(M, N, K, x.device, config)
    launch(_in_proj_kernel, grid, x.device, *descriptors(x, w, out, M, meta), *tail, **meta)
    return out

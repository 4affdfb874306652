"""Persistent GEMM tiles over TMA descriptors (Hopper): ``c = round(a [+ a2]) @ w.T`` in float32 sums.

The kernel behind two of a mixer's GEMMs in inference where cuBLAS's kernels leave the GPU idle between their waves of
tiles: in_proj at Vim-Ti's width (and Vim-S's on short sequences; :mod:`rmeeto.ops.triton.inproj`), and the two scan
directions' sum + out_proj at Vim-B's width (:mod:`rmeeto.ops.triton.outproj`, the sum in the prologue: a [M, K] plane
of each direction added in float32 and rounded to the activations' dtype, the bits ``torch.add`` gives). One program per
SM (at most one per output tile) walks the output tiles in grouped order (GROUP_M row tiles share their weight tiles in
L2), loading the operands with the tensor memory accelerator and writing each tile with a TMA store while the next
tile's loads are in flight; rows past M and channels past K read as zeros, rows past M are not written. Where the last
round of tiles would be at most half full and a tile's channel steps set its time (:func:`tail_split`), the left-over
tiles are cut into row halves spread over the programs. Descriptors are made on the host
(``triton.tools.tensor_descriptor.TensorDescriptor``, :func:`descriptors`); :class:`Gemm` keeps the rest of the launch
cached (:class:`rmeeto.ops.triton._launch.Launcher`), so a call costs the descriptors' fill and one launch. (Descriptors
made in the kernel, ``tl.make_tensor_descriptor``, cost 2-2.6 us per call on the GPU: session 32,
``benchmarks/gemm_ab_gpu.py``.) Needs compute capability 9.0 or more; 16-bit operands, each contiguous with 16-byte
aligned rows and base.
"""

from __future__ import annotations

import threading
from typing import Optional

import torch

from rmeeto.ops.triton._launch import Launcher, cdiv, device_sms, pdl_meta
from rmeeto.ops.triton._pdl import follow_previous

try:
    import triton
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor

    _HAS_TRITON = True
except Exception:  # pragma: no cover - depends on the install (a Triton without host TMA descriptors too)
    _HAS_TRITON = False

Tensor = torch.Tensor

__all__ = ["is_available", "device_fits", "aligned", "spec", "descriptors", "tail_split", "Gemm",
           "TAIL_SPLIT_MIN_K"]

_CAPABLE: dict = {}  # device index -> compute capability >= 9.0


def is_available() -> bool:
    return _HAS_TRITON


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


def aligned(*tensors: Tensor) -> bool:
    """Every tensor's base address a multiple of 16 bytes (what a descriptor needs; rows of 8 or more 16-bit
    channels, a multiple of 8, keep every row aligned)."""
    return all(t.data_ptr() % 16 == 0 for t in tensors)


def _programs(device: torch.device, tiles: int) -> int:
    """One program per SM, at most one per tile (4 under the interpreter)."""
    if device.type != "cuda":
        return min(4, tiles)
    return min(device_sms(device)[0], tiles)


if _HAS_TRITON:
    @triton.jit
    def _tile_at(tile, num_m, num_n, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
        """(first row, first column) of output tile ``tile`` in grouped order (GROUP_M row tiles share their
        weight tiles)."""
        in_group = GROUP_M * num_n
        first_m = (tile // in_group) * GROUP_M
        group_m = min(num_m - first_m, GROUP_M)
        return (first_m + (tile % in_group) % group_m) * BLOCK_M, ((tile % in_group) // group_m) * BLOCK_N

    @triton.jit
    def _tile_product(a_desc, a2_desc, w_desc, row, col, K, ROWS: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_K: tl.constexpr, TWO_A: tl.constexpr):
        """float32 sums of round(a (+ a2)) @ w.T over the [ROWS, BLOCK_N] tile at (row, col), steps of BLOCK_K."""
        acc = tl.zeros((ROWS, BLOCK_N), dtype=tl.float32)
        for k in range(0, K, BLOCK_K):
            a = a_desc.load([row, k])
            if TWO_A:  # the directions' sum, rounded as torch.add rounds it
                a = (a.to(tl.float32) + a2_desc.load([row, k]).to(tl.float32)).to(a.dtype)
            acc = tl.dot(a, w_desc.load([col, k]).T, acc)
        return acc

    @triton.jit
    def _tma_gemm_kernel(a_desc, a2_desc, w_desc, c_desc, as_desc, as2_desc, cs_desc, M, N, K,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                         NUM_PROGS: tl.constexpr, TWO_A: tl.constexpr, SPLIT: tl.constexpr = 1,
                         PDL: tl.constexpr = False):
        """c[M, N] = round(a[M, K] (+ a2[M, K] when TWO_A)) @ w[N, K].T over descriptors of blocks [BLOCK_M,
        BLOCK_K] (a, a2), [BLOCK_N, BLOCK_K] (w) and [BLOCK_M, BLOCK_N] (c): program ``program_id(0)`` of
        NUM_PROGS takes every NUM_PROGS-th output tile in grouped order, float32 sums over steps of BLOCK_K,
        stored in c's dtype. SPLIT > 1: only the tiles that fill whole rounds of NUM_PROGS are taken whole; each
        tile left over is cut into SPLIT tiles of BLOCK_M / SPLIT rows (descriptors as_desc, as2_desc, cs_desc of
        those rows), which the programs take in turn: a part-full last round of whole tiles becomes a shorter one
        of more, smaller tiles."""
        follow_previous(PDL)  # under PDL: wait for the previous kernel, then release the next
        num_m = tl.cdiv(M, BLOCK_M)
        num_n = tl.cdiv(N, BLOCK_N)
        tiles = num_m * num_n
        whole = tiles
        if SPLIT > 1:
            whole = (tiles // NUM_PROGS) * NUM_PROGS
        for tile in tl.range(tl.program_id(0), whole, NUM_PROGS, flatten=True):
            row, col = _tile_at(tile, num_m, num_n, BLOCK_M, BLOCK_N, GROUP_M)
            acc = _tile_product(a_desc, a2_desc, w_desc, row, col, K, BLOCK_M, BLOCK_N, BLOCK_K, TWO_A)
            c_desc.store([row, col], acc.to(c_desc.dtype))
        if SPLIT > 1:
            SUB: tl.constexpr = BLOCK_M // SPLIT
            for part in tl.range(tl.program_id(0), (tiles - whole) * SPLIT, NUM_PROGS):
                row, col = _tile_at(whole + part // SPLIT, num_m, num_n, BLOCK_M, BLOCK_N, GROUP_M)
                row += (part % SPLIT) * SUB
                acc = _tile_product(as_desc, as2_desc, w_desc, row, col, K, SUB, BLOCK_N, BLOCK_K, TWO_A)
                cs_desc.store([row, col], acc.to(cs_desc.dtype))


# The last round of a persistent launch is part-full where the tiles are not a multiple of the programs: e.g. Vim-B's
# sum + out_proj (1536 -> 768 channels, 128 x 256 tiles) at 153 tokens, batch 128: 459 tiles on 132 SMs, 3 whole
# rounds and one of 63 tiles that costs a fourth round's time. Where at most half the programs are left with a tile
# and a tile takes at least TAIL_SPLIT_MIN_K input channels (its time set by its channel steps, not by latency), the
# left-over tiles are cut in two row halves, one round of half tiles. Thirty-ninth session (H200, 132 SMs,
# benchmarks/tail_split_gpu.py, graphed us per call, the same bits): Vim-B's sum + out_proj at 153 / 142 / 109 / 98
# tokens 105.7 / 106.7 / 78.5 / 78.6 -> 97.8 / 99.1 / 71.4 / 70.8 (at 197 tokens, where the add + cuBLAS serves,
# 127.5 -> 120.5); slower where the halves take two rounds (164 tokens: 104.9 -> 115.9) and at Vim-Ti's and Vim-S's
# in_proj (192 and 384 channels: 3 and 6 channel steps) at every token count (Vim-Ti 187 tokens, 66 tiles left:
# 19.7 -> 20.1; 76 tokens: 10.2 -> 11.0): there a half tile takes about a whole tile's time.
TAIL_SPLIT_MIN_K = 1536


def tail_split(tiles: int, programs: int, block_m: int, k: int) -> int:
    """The row split of the tiles left over after the whole rounds of ``programs`` programs over ``k`` input
    channels: 2 where at most half the programs are left with a tile and ``k`` >= TAIL_SPLIT_MIN_K (and the halves
    keep 16 rows or more), else 1 (none)."""
    left = tiles % programs if programs else 0
    if 0 < 2 * left <= programs and k >= TAIL_SPLIT_MIN_K and block_m % 2 == 0 and block_m // 2 >= 16:
        return 2
    return 1


def spec(M: int, N: int, K: int, device: torch.device, config: dict, two_a: bool = False
         ) -> tuple[tuple, tuple, dict]:
    """(grid, scalar arguments, constexprs and launch options) of the kernel over M rows, N output and K input
    channels on ``device`` with the tiles of ``config`` (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps,
    num_stages; optionally TAIL_SPLIT, the left-over tiles' row split, else :func:`tail_split`'s); ``two_a``: the
    sum of two inputs. The descriptors (:func:`descriptors`) come first."""
    bm, bn = config["BLOCK_M"], config["BLOCK_N"]
    tiles = cdiv(M, bm) * cdiv(N, bn)
    progs = _programs(device, tiles)
    split = config.get("TAIL_SPLIT")
    split = tail_split(tiles, progs, bm, K) if split is None else split
    if split < 1 or bm % split:
        raise ValueError(f"tma_gemm: TAIL_SPLIT={split} must divide BLOCK_M={bm}")
    meta = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=config["BLOCK_K"], GROUP_M=config["GROUP_M"], NUM_PROGS=progs,
                TWO_A=bool(two_a), SPLIT=split, num_warps=config["num_warps"], num_stages=config["num_stages"],
                **pdl_meta())
    return (progs,), (M, N, K), meta


def descriptors(a: Tensor, a2: Optional[Tensor], w: Tensor, c: Tensor, M: int, meta: dict) -> tuple:
    """The kernel's seven descriptor arguments over M rows for ``a`` (M x K), ``a2`` (M x K, or None: that
    argument None), ``w`` [N, K] and ``c`` (M x N), each contiguous and 16-byte aligned (``a``, ``a2`` and ``c``
    of any shape with those sizes), with the blocks of ``meta`` (:func:`spec`'s), then those of a, a2 and c over
    the split tiles' rows (None without a split)."""
    bm, bn, bk = meta["BLOCK_M"], meta["BLOCK_N"], meta["BLOCK_K"]
    N, K = w.shape

    def rows(block: int) -> tuple:  # a, a2 and c over blocks of ``block`` rows
        return (TensorDescriptor(a, [M, K], [K, 1], [block, bk]),
                None if a2 is None else TensorDescriptor(a2, [M, K], [K, 1], [block, bk]),
                TensorDescriptor(c, [M, N], [N, 1], [block, bn]))

    da, da2, dc = rows(bm)
    split = meta.get("SPLIT", 1)
    return (da, da2, TensorDescriptor(w, [N, K], [K, 1], [bn, bk]), dc,
            *(rows(bm // split) if split > 1 else (None, None, None)))


class Gemm:
    """The kernel's launch for one shape, its fixed parts made once: ``Gemm(M, N, K, device, config, two_a)`` called
    with ``(a, a2, w, c)`` (as :func:`descriptors` takes them; ``a2`` None unless ``two_a``) launches through a
    :class:`rmeeto.ops.triton._launch.Launcher` (after the first call, the cached launcher: every call's operands
    must have the first call's shapes, strides and dtypes, as a plan's do).

    A thread's first call makes the descriptors (and so checks alignment, strides and blocks); its later calls point
    them at that call's tensors, all that changes between calls of a plan, and let go of the tensors once the launch
    has read them (a kept descriptor would otherwise hold a forward's activations alive). Per thread, so threads
    sharing a model never launch with each other's tensors. Made anew per call, the three or four descriptors cost
    8.5 us of Python on this project's workplace CPU and 2-2.7x that on the H200's host (RESULTS, thirty-sixth
    session), per in_proj / out_proj launch."""

    __slots__ = ("launcher", "M", "meta", "_local")

    def __init__(self, M: int, N: int, K: int, device: torch.device, config: dict, two_a: bool = False):
        grid, tail, meta = spec(M, N, K, device, config, two_a)
        self.launcher = Launcher(_tma_gemm_kernel, grid, device, tail, meta)
        self.M, self.meta = M, meta
        self._local = threading.local()

    def __call__(self, a: Tensor, a2: Optional[Tensor], w: Tensor, c: Tensor) -> None:
        local = self._local
        descs = getattr(local, "descs", None)
        if descs is None:
            descs = descriptors(a, a2, w, c, self.M, self.meta)
            local.descs = descs
        else:
            for d, t in zip(descs, (a, a2, w, c, a, a2, c)):  # descriptors' order (:func:`descriptors`)
                if d is not None:
                    d.base = t
        try:
            self.launcher(*descs)
        finally:
            for d in descs:
                if d is not None:
                    d.base = None

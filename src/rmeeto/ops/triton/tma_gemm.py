"""Persistent GEMM tiles over TMA descriptors (Hopper): ``c = round(a [+ a2]) @ w.T`` in float32 sums.

The kernel behind two of a mixer's GEMMs in inference where cuBLAS's kernels leave the GPU idle between their waves
of tiles: in_proj at Vim-Ti's width (and Vim-S's on short sequences; :mod:`rmeeto.ops.triton.inproj`), and the two
scan directions' sum + out_proj at Vim-B's width (:mod:`rmeeto.ops.triton.outproj`, the sum in the prologue: a
[M, K] plane of each direction added in float32 and rounded to the activations' dtype, the bits ``torch.add``
gives). One program per SM (at most one per output tile) walks the output tiles in grouped order (GROUP_M row tiles
share their weight tiles in L2), loading the operands with the tensor memory accelerator and writing each tile
with a TMA store while the next tile's loads are in flight; rows past M and channels past K read as zeros, rows
past M are not written. Descriptors are made on the host (``triton.tools.tensor_descriptor.TensorDescriptor``,
:func:`descriptors`); :class:`Gemm` keeps the rest of the launch cached (:class:`rmeeto.ops.triton._launch.Launcher`),
so a call costs the descriptors' fill and one launch. (Descriptors made in the kernel, ``tl.make_tensor_descriptor``, cost 2-2.6 us per
call on the GPU: session 32, ``benchmarks/gemm_ab_gpu.py``.) Needs compute capability 9.0 or more; 16-bit
operands, each contiguous with 16-byte aligned rows and base.
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

__all__ = ["is_available", "device_fits", "aligned", "spec", "descriptors", "Gemm"]

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
    def _tma_gemm_kernel(a_desc, a2_desc, w_desc, c_desc, M, N, K,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                         NUM_PROGS: tl.constexpr, TWO_A: tl.constexpr, PDL: tl.constexpr = False):
        """c[M, N] = round(a[M, K] (+ a2[M, K] when TWO_A)) @ w[N, K].T over descriptors of blocks [BLOCK_M,
        BLOCK_K] (a, a2), [BLOCK_N, BLOCK_K] (w) and [BLOCK_M, BLOCK_N] (c): program ``program_id(0)`` of
        NUM_PROGS takes every NUM_PROGS-th output tile in grouped order, float32 sums over steps of BLOCK_K,
        stored in c's dtype."""
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
                a = a_desc.load([row, k])
                if TWO_A:  # the directions' sum, rounded as torch.add rounds it
                    a = (a.to(tl.float32) + a2_desc.load([row, k]).to(tl.float32)).to(a.dtype)
                acc = tl.dot(a, w_desc.load([col, k]).T, acc)
            c_desc.store([row, col], acc.to(c_desc.dtype))


def spec(M: int, N: int, K: int, device: torch.device, config: dict, two_a: bool = False
         ) -> tuple[tuple, tuple, dict]:
    """(grid, scalar arguments, constexprs and launch options) of the kernel over M rows, N output and K input
    channels on ``device`` with the tiles of ``config`` (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps,
    num_stages); ``two_a``: the sum of two inputs. The descriptors (:func:`descriptors`) come first."""
    bm, bn = config["BLOCK_M"], config["BLOCK_N"]
    progs = _programs(device, cdiv(M, bm) * cdiv(N, bn))
    meta = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=config["BLOCK_K"], GROUP_M=config["GROUP_M"], NUM_PROGS=progs,
                TWO_A=bool(two_a), num_warps=config["num_warps"], num_stages=config["num_stages"], **pdl_meta())
    return (progs,), (M, N, K), meta


def descriptors(a: Tensor, a2: Optional[Tensor], w: Tensor, c: Tensor, M: int, meta: dict) -> tuple:
    """The kernel's four descriptor arguments over M rows for ``a`` (M x K), ``a2`` (M x K, or None: that
    argument None), ``w`` [N, K] and ``c`` (M x N), each contiguous and 16-byte aligned (``a``, ``a2`` and ``c``
    of any shape with those sizes), with the blocks of ``meta`` (:func:`spec`'s)."""
    bm, bn, bk = meta["BLOCK_M"], meta["BLOCK_N"], meta["BLOCK_K"]
    N, K = w.shape
    return (TensorDescriptor(a, [M, K], [K, 1], [bm, bk]),
            None if a2 is None else TensorDescriptor(a2, [M, K], [K, 1], [bm, bk]),
            TensorDescriptor(w, [N, K], [K, 1], [bn, bk]), TensorDescriptor(c, [M, N], [N, 1], [bm, bn]))


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
            da, da2, dw, dc = descs
            da.base, dw.base, dc.base = a, w, c
            if da2 is not None:
                da2.base = a2
        try:
            self.launcher(*descs)
        finally:
            for d in descs:
                if d is not None:
                    d.base = None

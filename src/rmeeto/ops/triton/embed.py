"""Triton kernels of the token embedding (inference): cutting an image into patch rows, putting the class token
into the patch tokens while adding the position embedding, and the whole embedding (patch GEMM included) in one.

A Vim forward starts with three elementwise kernels that scale with nothing a merge removes: the patch cut-out
(``reshape / permute / reshape``: 66 us per 128 images on an H200, 1.2 TB/s), the class-token ``cat`` (33 us
at Vim-S) and the position add (23 us). Here they are two kernels, each one read and one write of its data:

- :func:`patchify`: x [batch, C, H, W] (any strides) -> [batch, (H/p) * (W/p), C * p * p], row-major patches, each
  row in (channel, row, column) order: the matrix whose product with the patch embedding's flattened weight is
  the strided conv. A program reads ``C * p`` image rows of one patch row whole (coalesced) and writes each
  p-wide run to its patch (a 32-byte sector at p = 16 in 16-bit dtypes).
- :func:`insert_cls_add_pos`: patch tokens [batch, N, E], the class token [E] and the position embedding
  [N + 1, E] -> [batch, N + 1, E] with the class token at row ``index`` and the patches around it, plus the
  position embedding; the class token and the position embedding are rounded to the tokens' dtype first and
  the sum computed in float32 and rounded once, which is what ``cat`` then ``+`` in that dtype compute.

Both are copies and one rounding, so their outputs equal the PyTorch ops' bit for bit
(tests/ops/test_interpreted.py, tests/ops/test_gpu_embed.py). No gradient: :mod:`rmeeto.ops.embed` takes them
in inference only.

- :func:`embed_tokens`: the cut-out, the patch GEMM (bias included) and the insert + position add as one kernel,
  the GEMM reading its patches straight from the image, so the patch rows are never written and read back
  (session 33, H200, batch 128, per call: 39.8 / 53.7 us at Vim-Ti / S widths against 44.5 / 60.0 for the three
  kernels; 102 against 93 at Vim-B's), and, under a CUDA graph, reading the image at an offset held on the device
  (:class:`rmeeto.ops.embed.GraphInput`), so a replay need not copy its images into the captured ones (19 us).
  Its float32 sums may round otherwise than cuBLAS's (on an H200 they gave the same bits): equal to rounding.
"""

from __future__ import annotations

import torch

from rmeeto.ops.triton._launch import cdiv, launch, next_pow2

try:
    import triton
    import triton.language as tl

    _HAS_TRITON = True
except Exception:  # pragma: no cover - depends on the install
    _HAS_TRITON = False

Tensor = torch.Tensor

__all__ = ["is_available", "patchify", "insert_cls_add_pos", "embed_tokens", "embed_block_n"]


def is_available() -> bool:
    return _HAS_TRITON and torch.cuda.is_available()


if _HAS_TRITON:
    @triton.jit
    def _patchify_kernel(x_ptr, out_ptr, C, W, GH, GW, s_b, s_c, s_h, s_w,
                         P: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr):
        """Patch row ``program_id(0) % GH`` of image ``program_id(0) // GH``: its C * P image rows (channel c, row
        ky at tile row c * P + ky), each BLOCK_W columns wide, to out[b, i * GW + x // P, (c * P + ky) * P + x % P]."""
        pid = tl.program_id(0)
        b = (pid // GH).to(tl.int64)
        i = pid % GH
        r = tl.arange(0, BLOCK_R)
        c = r // P
        ky = r % P
        col = tl.arange(0, BLOCK_W)
        m = (r < C * P)[:, None] & (col < GW * P)[None, :]
        src = x_ptr + b * s_b + c[:, None] * s_c + (i * P + ky)[:, None] * s_h + col[None, :] * s_w
        v = tl.load(src, mask=m)
        K = C * P * P
        dst = out_ptr + (b * GH * GW + i * GW) * K + (col // P)[None, :] * K + r[:, None] * P + (col % P)[None, :]
        tl.store(dst, v, mask=m)

    @triton.jit
    def _embed_tokens_kernel(x_ptr, off_ptr, w_ptr, b_ptr, cls_ptr, pos_ptr, out_ptr,
                             M, NP, E, K, GW, INDEX, CLS_AT, s_b, s_c, s_h, s_w,
                             P: tl.constexpr, INDIRECT: tl.constexpr, ALIGN: tl.constexpr, HAS_BIAS: tl.constexpr,
                             EVEN_M: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                             BLOCK_K: tl.constexpr):
        """Output channels ``program_id(0)`` (BLOCK_N) of patches ``program_id(1)`` (BLOCK_M, counted over the whole
        batch): the patch embedding GEMM with its A operand read straight from the image (patch m: image m // NP,
        grid cell m % NP; column k: channel k // P^2, row (k // P) % P, column k % P of the patch), float32 sums,
        rounded to the output's dtype with the bias added (as ``F.linear`` in that dtype), then the position
        embedding added in float32 and rounded again (as the class-token insert's ``+``), stored at token row
        n + (n >= INDEX). The program holding patch CLS_AT of an image also writes that image's class-token row
        INDEX.
        ``INDIRECT``: the image read lies ``off_ptr[0]`` elements (int64, on the device; a multiple of ALIGN, 16
        bytes) from ``x_ptr``: a CUDA graph captured once reads whatever image that offset names. (An offset from
        the pointer argument, not an address cast to a pointer: the cast would lose the 16-byte alignment Triton
        knows of the argument, and with it the vector loads.)"""
        CDT: tl.constexpr = out_ptr.dtype.element_ty
        pid_n = tl.program_id(0)
        pid_m = tl.program_id(1)
        if INDIRECT:  # a whole number of 16-byte steps (the caller's promise): loads stay vectorised
            x_ptr += tl.multiple_of(tl.load(off_ptr), ALIGN)
        m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        mm = m < M
        b = (m // NP).to(tl.int64)
        n = m % NP
        off_m = b * s_b + (n // GW).to(tl.int64) * (P * s_h) + (n % GW).to(tl.int64) * (P * s_w)
        e = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        me = e < E
        kk = tl.arange(0, BLOCK_K)
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + kk
            off_k = (k // (P * P)) * s_c + ((k // P) % P) * s_h + (k % P) * s_w
            src = x_ptr + off_m[:, None] + off_k[None, :]
            if EVEN_M and EVEN_K:
                a = tl.load(src)
            else:
                a = tl.load(src, mask=mm[:, None] & (k < K)[None, :], other=0.0)
            w = tl.load(w_ptr + e[None, :] * K + k[:, None], mask=me[None, :] & (k < K)[:, None], other=0.0)
            acc = tl.dot(a.to(CDT), w.to(CDT), acc)
        if HAS_BIAS:
            acc += tl.load(b_ptr + e, mask=me, other=0.0).to(CDT).to(tl.float32)[None, :]
        tok = n + (n >= INDEX).to(tl.int32)
        pos = tl.load(pos_ptr + tok[:, None] * E + e[None, :], mask=mm[:, None] & me[None, :], other=0.0)
        y = (acc.to(CDT).to(tl.float32) + pos.to(CDT).to(tl.float32)).to(CDT)
        row = b * (NP + 1) + tok
        tl.store(out_ptr + row[:, None] * E + e[None, :], y, mask=mm[:, None] & me[None, :])
        # the class-token row: its value broadcast over the tile, stored only by the row of patch CLS_AT
        cls = tl.load(cls_ptr + e, mask=me, other=0.0).to(CDT).to(tl.float32)
        cpos = tl.load(pos_ptr + INDEX * E + e, mask=me, other=0.0).to(CDT).to(tl.float32)
        cval = tl.broadcast_to((cls + cpos).to(CDT)[None, :], [BLOCK_M, BLOCK_N])
        crow = b * (NP + 1) + INDEX
        tl.store(out_ptr + crow[:, None] * E + e[None, :], cval, mask=(mm & (n == CLS_AT))[:, None] & me[None, :])

    @triton.jit
    def _insert_cls_add_pos_kernel(t_ptr, cls_ptr, pos_ptr, out_ptr, N, E, INDEX, s_tb, s_tn,
                                   BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr):
        """BLOCK_T output rows of one image (grid (batch, cdiv(N + 1, BLOCK_T))): row INDEX is the class token,
        row n > INDEX patch n - 1, the others patch n; each plus position row n, in float32, rounded once."""
        b = tl.program_id(0).to(tl.int64)
        n = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
        e = tl.arange(0, BLOCK_E)
        me = e < E
        rows = n < N + 1
        is_cls = n == INDEX
        src_n = n - (n > INDEX).to(tl.int32)
        dt = out_ptr.dtype.element_ty
        x = tl.load(t_ptr + b * s_tb + src_n[:, None].to(tl.int64) * s_tn + e[None, :],
                    mask=(rows & ~is_cls)[:, None] & me[None, :], other=0.0)
        cls = tl.load(cls_ptr + e, mask=me, other=0.0).to(dt)
        x = tl.where(is_cls[:, None], cls[None, :], x.to(dt))
        pos = tl.load(pos_ptr + n[:, None] * E + e[None, :], mask=rows[:, None] & me[None, :], other=0.0).to(dt)
        y = (x.to(tl.float32) + pos.to(tl.float32)).to(dt)
        tl.store(out_ptr + (b * (N + 1) + n[:, None]) * E + e[None, :], y, mask=rows[:, None] & me[None, :])


def patchify(x: Tensor, patch: int) -> Tensor:
    """x [batch, C, H, W], H and W multiples of ``patch`` -> [batch, (H / patch) * (W / patch), C * patch^2]:
    ``x.reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * p * p)`` in one kernel."""
    b, c, h, w = x.shape
    gh, gw = h // patch, w // patch
    out = torch.empty(b, gh * gw, c * patch * patch, device=x.device, dtype=x.dtype)
    block_r, block_w = next_pow2(c * patch), next_pow2(gw * patch)
    warps = 8 if block_r * block_w >= 8192 else 4
    launch(_patchify_kernel, (b * gh,), x.device, x, out, c, w, gh, gw, *x.stride(),
           P=patch, BLOCK_R=block_r, BLOCK_W=block_w, num_warps=warps)
    return out


def insert_cls_add_pos(tokens: Tensor, cls: Tensor, pos: Tensor, index: int) -> Tensor:
    """tokens [batch, N, E] (unit channel stride), cls [E], pos [N + 1, E] (contiguous) -> [batch, N + 1, E] in
    tokens' dtype: ``torch.cat([t[:, :index], cls, t[:, index:]], 1) + pos`` with cls and pos rounded to that
    dtype first, as the PyTorch ops compute it."""
    b, n, e = tokens.shape
    out = torch.empty(b, n + 1, e, device=tokens.device, dtype=tokens.dtype)
    block_e = next_pow2(e)
    block_t = max(1, min(16, 4096 // block_e))
    launch(_insert_cls_add_pos_kernel, (b, cdiv(n + 1, block_t)), tokens.device,
           tokens, cls, pos, out, n, e, index, tokens.stride(0), tokens.stride(1),
           BLOCK_T=block_t, BLOCK_E=block_e, num_warps=4)
    return out


# Tiles of the fused patch embedding: BLOCK_M patches x BLOCK_N output channels, BLOCK_K image values per step;
# BLOCK_N the largest power of two up to EMBED_MAX_N dividing the width (Vim-Ti 192 -> 64: no padded channels).
# Session 33, call 1 (benchmarks/bench_embed_gpu.py --sweep, H200, batch 128): 64 x 128 x 64 in 4 warps was within
# 1 us of the best of ten tilings at each of Vim-Ti's, S's and B's widths (39.8 / 54.1 / 100.1 us).
EMBED_BLOCK_M = 64
EMBED_BLOCK_K = 64
EMBED_MAX_N = 128
EMBED_WARPS = 4
EMBED_STAGES = 4


def embed_block_n(e: int) -> int:
    """Output channels per tile for width ``e``: the largest power of two up to EMBED_MAX_N that divides it (at
    least 16), else the next power of two of ``e`` capped at EMBED_MAX_N."""
    bn = EMBED_MAX_N
    while bn > 16 and e % bn:
        bn //= 2
    return bn if e % bn == 0 else min(EMBED_MAX_N, next_pow2(e))


def embed_tokens(x: Tensor, weight: Tensor, bias: Tensor | None, cls: Tensor, pos: Tensor, index: int, patch: int,
                 dtype: torch.dtype, offset: Tensor | None = None) -> Tensor:
    """x [batch, C, H, W] (any strides), weight [E, C * patch^2] (contiguous), bias [E] or None, cls [E],
    pos [N + 1, E] (contiguous) -> tokens [batch, N + 1, E] in ``dtype`` (float16 or bfloat16): the patch
    embedding GEMM, the class token at row ``index`` and the position embedding added, in one kernel. Operands
    are rounded to ``dtype`` as they are read (what autocast does to a float32 image and weights). ``offset``: an
    int64 tensor [1] on the device: the kernel reads the image laid out as ``x`` that many elements (a multiple of
    16 bytes) from ``x`` instead (``x`` 16-byte aligned)."""
    b, c, h, w = x.shape
    gh, gw = h // patch, w // patch
    n = gh * gw
    e, k = weight.shape[0], c * patch * patch
    out = torch.empty(b, n + 1, e, device=x.device, dtype=dtype)
    m = b * n
    bn = embed_block_n(e)
    launch(_embed_tokens_kernel, (cdiv(e, bn), cdiv(m, EMBED_BLOCK_M)), x.device,
           x, offset if offset is not None else x, weight, bias if bias is not None else weight, cls, pos, out,
           m, n, e, k, gw, index, min(index, n - 1), *x.stride(),
           P=patch, INDIRECT=offset is not None, ALIGN=16 // x.element_size(), HAS_BIAS=bias is not None,
           EVEN_M=m % EMBED_BLOCK_M == 0, EVEN_K=k % EMBED_BLOCK_K == 0, BLOCK_M=EMBED_BLOCK_M, BLOCK_N=bn,
           BLOCK_K=EMBED_BLOCK_K,
           num_warps=EMBED_WARPS, num_stages=EMBED_STAGES)
    return out

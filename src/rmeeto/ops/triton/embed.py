"""Triton kernels of the token embedding's two copies (inference): cutting an image into patch rows, and putting
the class token into the patch tokens while adding the position embedding.

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
"""

from __future__ import annotations

import torch

from rmeeto.ops.triton._launch import launch, next_pow2

try:
    import triton
    import triton.language as tl

    _HAS_TRITON = True
except Exception:  # pragma: no cover - depends on the install
    _HAS_TRITON = False

Tensor = torch.Tensor

__all__ = ["is_available", "patchify", "insert_cls_add_pos"]


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
    launch(_insert_cls_add_pos_kernel, (b, -(-(n + 1) // block_t)), tokens.device,
           tokens, cls, pos, out, n, e, index, tokens.stride(0), tokens.stride(1),
           BLOCK_T=block_t, BLOCK_E=block_e, num_warps=4)
    return out

"""The token embedding's copies: an image cut into patch rows, and the class token put among the patch tokens
with the position embedding added. PyTorch references and dispatch to :mod:`rmeeto.ops.triton.embed`.

    rows   = patch_rows(x, patch)                          # [batch, (H/p) * (W/p), C * p * p]
    tokens = insert_cls_add_pos(patches, cls, pos, index)  # [batch, N + 1, E]

``patch_rows(x) @ weight.reshape(E, -1).T + bias`` is the strided ``Conv2d(C, E, p, stride=p)`` of the patch
embedding; ``insert_cls_add_pos`` is ``torch.cat([t[:, :index], cls, t[:, index:]], 1) + pos`` with cls and
pos in the tokens' dtype. The fused kernels copy and round once, so both paths give the same bits; they run
for CUDA tensors when no gradient has to flow through the op (inference, a frozen teacher, the input image
of a training step), never while ``torch.compile`` traces (Inductor fuses the PyTorch ops itself).
"""

from __future__ import annotations

import torch

from rmeeto.ops import policy

try:  # optional: the fused kernels need Triton
    from rmeeto.ops.triton import embed as _triton_embed
except Exception:  # pragma: no cover - depends on the install
    _triton_embed = None

Tensor = torch.Tensor

__all__ = ["patch_rows", "patch_rows_torch", "insert_cls_add_pos", "insert_cls_add_pos_torch"]


def _fused(x: Tensor, backend: str, *tensors: Tensor) -> bool:
    if _triton_embed is None or not policy.use_fused("embed", x, backend) or torch.compiler.is_compiling():
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def patch_rows_torch(x: Tensor, patch: int) -> Tensor:
    """Reference of :func:`patch_rows`."""
    b, c, h, w = x.shape
    p = patch
    return x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * p * p)


def patch_rows(x: Tensor, patch: int, backend: str = "auto") -> Tensor:
    """x [batch, C, H, W] (H, W multiples of ``patch``) -> [batch, (H / patch) * (W / patch), C * patch^2]: the
    patches in row-major order, each flattened in (channel, row, column) order."""
    if x.dim() != 4 or x.shape[-2] % patch or x.shape[-1] % patch:
        raise ValueError(f"patch_rows needs [batch, C, H, W] with H and W multiples of {patch}, got {tuple(x.shape)}")
    if _fused(x, backend, x):
        return _triton_embed.patchify(x, patch)
    return patch_rows_torch(x, patch)


def insert_cls_add_pos_torch(tokens: Tensor, cls: Tensor, pos: Tensor, index: int) -> Tensor:
    """Reference of :func:`insert_cls_add_pos`."""
    cls = cls.reshape(1, 1, -1).expand(tokens.shape[0], -1, -1).to(tokens.dtype)
    tokens = torch.cat([tokens[:, :index], cls, tokens[:, index:]], dim=1)
    return tokens + pos.reshape(1, tokens.shape[1], -1).to(tokens.dtype)


def insert_cls_add_pos(tokens: Tensor, cls: Tensor, pos: Tensor, index: int, backend: str = "auto") -> Tensor:
    """tokens [batch, N, E], cls [E] (or [1, 1, E]), pos [N + 1, E] (or [1, N + 1, E]) -> [batch, N + 1, E] in
    tokens' dtype: the class token at row ``index`` (0 <= index <= N), the patches around it, plus ``pos``."""
    n, e = tokens.shape[1], tokens.shape[2]
    if cls.numel() != e or pos.numel() != (n + 1) * e or not 0 <= index <= n:
        raise ValueError(f"insert_cls_add_pos: tokens {tuple(tokens.shape)}, cls {tuple(cls.shape)}, pos "
                         f"{tuple(pos.shape)} and index {index} do not fit")
    if _fused(tokens, backend, tokens, cls, pos):
        if tokens.stride(2) != 1:
            tokens = tokens.contiguous()
        return _triton_embed.insert_cls_add_pos(tokens, cls.reshape(e).contiguous(),
                                                pos.reshape(n + 1, e).contiguous(), index)
    return insert_cls_add_pos_torch(tokens, cls, pos, index)

"""The token embedding: an image cut into patch rows, the patch GEMM, and the class token put among the patch
tokens with the position embedding added. PyTorch references and dispatch to :mod:`rmeeto.ops.triton.embed`.

    rows   = patch_rows(x, patch)                          # [batch, (H/p) * (W/p), C * p * p]
    tokens = insert_cls_add_pos(patches, cls, pos, index)  # [batch, N + 1, E]
    tokens = embed_tokens(x, weight, bias, cls, pos, index, patch)  # all three (with the GEMM) at once

``patch_rows(x) @ weight.reshape(E, -1).T + bias`` is the strided ``Conv2d(C, E, p, stride=p)`` of the patch
embedding; ``insert_cls_add_pos`` is ``torch.cat([t[:, :index], cls, t[:, index:]], 1) + pos`` with cls and
pos in the tokens' dtype. The fused kernels copy and round once, so both paths give the same bits; they run
for CUDA tensors when no gradient has to flow through the op (inference, a frozen teacher, the input image
of a training step), never while ``torch.compile`` traces (Inductor fuses the PyTorch ops itself).

:func:`embed_tokens` is the whole embedding of a CUDA forward: in inference (switch ``embed_gemm``) one kernel, a
GEMM that reads its patches straight from the image and writes the tokens with the class token and the position
embedding in place (the patch rows never written; sums in another order than cuBLAS's, so equal to rounding),
else the three ops above. While a CUDA graph is captured over an input registered with :func:`graph_input`, that
kernel reads the image at an offset held in device memory, so the graph can be replayed on another image without
copying it into the captured one (:class:`rmeeto.fast.GraphedForward`).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator, Optional

import torch
import torch.nn.functional as F

from rmeeto.ops import policy

try:  # optional: the fused kernels need Triton
    from rmeeto.ops.triton import embed as _triton_embed
except Exception:  # pragma: no cover - depends on the install
    _triton_embed = None

Tensor = torch.Tensor

__all__ = ["patch_rows", "patch_rows_torch", "insert_cls_add_pos", "insert_cls_add_pos_torch", "embed_tokens",
           "embed_tokens_dtype", "GraphInput", "graph_input"]


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


class GraphInput:
    """The input of a forward being captured into a CUDA graph, which the fused embedding reads at ``offset``
    elements from it (int64 [1] on its device; 0 at first) rather than at the address the kernel was given.
    ``used``: a kernel did so during the capture. :meth:`point_at` makes the graph's replays read another tensor
    of the same shape, dtype and strides, 16-byte aligned as the captured one (the caller checks); it stays the
    caller's to keep alive until they ran. The graph reads ``offset`` on every replay: keep this object as long as
    the graph."""

    def __init__(self, x: Tensor):
        self.tensor = x
        self.offset = torch.zeros(1, dtype=torch.int64, device=x.device)
        self.used = False
        self._pointed = x.data_ptr()

    def point_at(self, x: Tensor) -> None:
        """Replays from now on read ``x`` (a fill of ``offset`` on the current stream, skipped if unchanged)."""
        ptr = x.data_ptr()
        if ptr != self._pointed:
            self.offset.fill_((ptr - self.tensor.data_ptr()) // self.tensor.element_size())
            self._pointed = ptr


_capture = threading.local()


@contextlib.contextmanager
def graph_input(x: Tensor) -> Iterator[GraphInput]:
    """Within the block (a CUDA graph capture on this thread), :func:`embed_tokens` called on ``x`` itself reads
    the image at the yielded :class:`GraphInput`'s offset from it."""
    entry = GraphInput(x)
    previous = getattr(_capture, "entry", None)
    _capture.entry = entry
    try:
        yield entry
    finally:
        _capture.entry = previous


def embed_tokens_dtype(x: Tensor, weight: Tensor, bias: Optional[Tensor], cls: Tensor, pos: Tensor,
                       backend: str = "auto") -> Optional[torch.dtype]:
    """The dtype :func:`embed_tokens`'s fused kernel computes in for these inputs here, or None where it does not
    apply: a CUDA image, Triton and the switches ``embed`` and ``embed_gemm`` on for ``backend``, not while
    ``torch.compile`` traces, no gradient to flow, and a 16-bit dtype for the GEMM: autocast's (float16 or
    bfloat16) where it is on, else the image's, with weights of that dtype (what ``F.linear`` would take)."""
    if (_triton_embed is None or not policy.use_fused("embed", x, backend)
            or not policy.use_fused("embed_gemm", x, backend) or torch.compiler.is_compiling()):
        return None
    params = (weight, cls, pos) if bias is None else (weight, bias, cls, pos)
    if any(p.device != x.device for p in params):
        return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, *params)):
        return None
    if torch.is_autocast_enabled("cuda"):
        dtype = torch.get_autocast_dtype("cuda")
        if not (x.dtype.is_floating_point and weight.dtype.is_floating_point):
            return None
    else:
        dtype = x.dtype
        if weight.dtype != dtype or (bias is not None and bias.dtype != dtype):
            return None
    return dtype if dtype in (torch.float16, torch.bfloat16) else None


def embed_tokens(x: Tensor, weight: Tensor, bias: Optional[Tensor], cls: Tensor, pos: Tensor, index: int,
                 patch: int, backend: str = "auto") -> Tensor:
    """x [batch, C, H, W] (H, W multiples of ``patch``), the patch embedding's conv weight [E, C, patch, patch]
    (or [E, C * patch^2]) and bias [E] (or None), cls [E], pos [N + 1, E] -> tokens [batch, N + 1, E]:
    ``insert_cls_add_pos(F.linear(patch_rows(x, patch), weight.reshape(E, -1), bias), cls, pos, index)``, as
    one kernel where :func:`embed_tokens_dtype` says so (equal to rounding: the GEMM's sums in another order)."""
    if x.dim() != 4 or x.shape[-2] % patch or x.shape[-1] % patch:
        raise ValueError(f"embed_tokens needs [batch, C, H, W] with H and W multiples of {patch}, got {tuple(x.shape)}")
    e = weight.shape[0]
    n = (x.shape[-2] // patch) * (x.shape[-1] // patch)
    w2 = weight.reshape(e, -1)
    if (w2.shape[1] != x.shape[1] * patch * patch or cls.numel() != e or pos.numel() != (n + 1) * e
            or not 0 <= index <= n):
        raise ValueError(f"embed_tokens: image {tuple(x.shape)}, weight {tuple(weight.shape)}, cls "
                         f"{tuple(cls.shape)}, pos {tuple(pos.shape)} and index {index} do not fit patch {patch}")
    dtype = embed_tokens_dtype(x, weight, bias, cls, pos, backend)
    if dtype is None:
        tokens = F.linear(patch_rows(x, patch, backend), w2, bias)
        return insert_cls_add_pos(tokens, cls, pos, index, backend)
    entry = getattr(_capture, "entry", None)
    offset = None
    if entry is not None and x is entry.tensor and x.data_ptr() % 16 == 0:
        offset = entry.offset
        entry.used = True
    return _triton_embed.embed_tokens(x, w2.contiguous(), bias, cls.reshape(e).contiguous(),
                                      pos.reshape(n + 1, e).contiguous(), index, patch, dtype, offset)

"""One place that knows how the two backbones differ, so commands never branch on the model type.

A Vim (:class:`rmeeto.models.vim.VisionMamba`) keeps its blocks in ``model.layers``, puts the class token in the
middle and merges at even layers (:meth:`MergeConfig.schedule`); a timm ViT/DeiT keeps them in ``model.blocks``,
puts the class token first and merges ToMe-style in every block (:func:`rmeeto.merge_vit.vit_schedule`). The
functions below take either model (or a registered name) and answer the same question for both:

    depth_of(model)                        number of blocks
    blocks_of(model)                       the blocks (hooks go on them)
    num_tokens_of(model)                   tokens entering block 0, class token included
    cls_position_of(model)                 index of the class token entering block 0
    schedule_for(model_or_name, config)    static LayerSchedule per block
    forward_tokens(model, x, track_source) -> (tokens [batch, N, E], TokenState)
    head_logits(model, tokens, state)      classifier on the class token -> [batch, classes]
    block_state(output)                    TokenState a block returns (hooks read it)
    set_scan_backend(model, backend)       Vim: choose the scan kernel; ViT: nothing to choose
    is_vit_name(name)                      whether a registered name is a ViT/DeiT row
    default_interval(name)                 merge interval the model family uses (Vim 2, ViT 1)
"""

from __future__ import annotations

from typing import Union

import torch
import torch.nn as nn

from rmeeto.merge import LayerSchedule, MergeConfig
from rmeeto.models import get_config
from rmeeto.models.vim import TokenState
from rmeeto.models.vit import VIT_MODELS, ViTArch, is_vit

Tensor = torch.Tensor

__all__ = [
    "is_vit", "is_vit_name", "default_interval", "depth_of", "blocks_of", "num_tokens_of", "cls_position_of",
    "schedule_for", "forward_tokens", "head_logits", "block_state", "set_scan_backend", "vit_arch",
]


def _merge_vit():
    """:mod:`rmeeto.merge_vit`, imported on first use: it imports timm, which only ViTs need."""
    from rmeeto import merge_vit

    return merge_vit


def is_vit_name(name: str) -> bool:
    """Whether ``name`` is a registered ViT/DeiT row (:mod:`rmeeto.models.vit`)."""
    return name in VIT_MODELS


def default_interval(name: str) -> int:
    """The merge interval of the model family: 1 for a ViT (ToMe merges in every block), else MergeConfig's."""
    return 1 if is_vit_name(name) else MergeConfig().interval


def blocks_of(model: nn.Module) -> nn.ModuleList:
    return model.blocks if is_vit(model) else model.layers


def depth_of(model: nn.Module) -> int:
    return len(blocks_of(model))


def num_tokens_of(model: nn.Module) -> int:
    if is_vit(model):
        return model.patch_embed.num_patches + model.num_prefix_tokens
    return model.num_tokens


def cls_position_of(model: nn.Module) -> int:
    return _merge_vit().CLS_INDEX if is_vit(model) else model.cls_position


def schedule_for(model_or_name: Union[str, nn.Module], config: MergeConfig) -> list[LayerSchedule]:
    """The static merge plan of ``config`` on a built model or a registered name (one entry per block);
    ValueError if the config does not fit (e.g. a per-layer ``num_merged`` list of the wrong length)."""
    if isinstance(model_or_name, str):
        arch = get_config(model_or_name).arch
        if isinstance(arch, ViTArch):
            return _merge_vit().vit_schedule(config, arch.num_tokens, arch.depth)
        return config.schedule(arch.num_tokens, arch.depth, arch.cls_index)
    model = model_or_name
    if is_vit(model):
        return _merge_vit().vit_schedule(config, num_tokens_of(model), depth_of(model))
    return config.schedule(model.num_tokens, depth_of(model), model.cls_position)


def forward_tokens(model: nn.Module, images: Tensor, track_source: bool = False) -> tuple[Tensor, TokenState]:
    """``images`` [batch, C, H, W] -> (final-norm tokens [batch, N, E], TokenState with ``cls_index``, ``size``
    [batch, N, 1] or None, ``source`` [batch, N, N0] when ``track_source``)."""
    if is_vit(model):
        return _merge_vit().forward_tokens(model, images, track_source)
    return model.forward_tokens(images, track_source=track_source)


def head_logits(model: nn.Module, tokens: Tensor, state: TokenState) -> Tensor:
    """Logits [batch, classes] from :func:`forward_tokens`'s output (the head reads the class token)."""
    if is_vit(model):
        return model.forward_head(tokens)  # timm pools token 0 (global_pool="token") and applies fc_norm
    return model.forward_head(tokens[:, state.cls_index])


def block_state(output) -> TokenState:
    """The TokenState a merging block returns: Vim (hidden, residual, state), ViT (x, state)."""
    return output[-1]


def set_scan_backend(model: nn.Module, backend: str) -> None:
    """Vim: choose the selective-scan kernel. A ViT has no scan: 'auto' is accepted, any forced backend is an
    error (it would be silently meaningless)."""
    if is_vit(model):
        if backend != "auto":
            raise ValueError(f"backend={backend!r} selects a Mamba scan kernel; a ViT has none (use 'auto')")
        return
    model.set_scan_backend(backend)


def vit_arch(model_or_name) -> "ViTArch | None":
    """The :class:`ViTArch` of a ViT name, a ViTArch, or a built timm ViT (read off its modules, so overrides such
    as ``num_classes`` or ``img_size`` are included); None for anything that is not a ViT."""
    if isinstance(model_or_name, ViTArch):
        return model_or_name
    if isinstance(model_or_name, str):
        return VIT_MODELS[model_or_name].arch if is_vit_name(model_or_name) else None
    if not is_vit(model_or_name):
        return None
    m = model_or_name
    block = m.blocks[0]
    return ViTArch(
        img_size=m.patch_embed.img_size[0], patch_size=m.patch_embed.patch_size[0], embed_dim=m.embed_dim,
        depth=len(m.blocks), num_heads=block.attn.num_heads, mlp_ratio=block.mlp.fc1.out_features / m.embed_dim,
        num_classes=m.num_classes, in_chans=m.patch_embed.proj.in_channels,
    )

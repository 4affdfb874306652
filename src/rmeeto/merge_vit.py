"""ToMe-style token merging for timm ViTs with a class token (DeiT in R-MeeTo's Table 4).

Paper: "Token Merging: Your ViT but Faster" (Bolya et al., 2023, https://arxiv.org/abs/2210.09461); the R-MeeTo
release's DeiT path (``RMeeTo_deit.py``) follows it but cannot run as released (``shared/SPEC.md`` section 6).

In every merging block, after the attention residual and before the MLP::

    x = x + attn(norm1(x), attn_mask=log(size))     # proportional attention (no mask while all sizes are 1)
    [shuffle part of the non-class tokens]            # MergeConfig.shuffle_rate, rmeeto.shuffle
    plan = bipartite_match(x, cls_index=0, r)        # metric = the token state itself, cosine
    x, size = merge_streams([x], size, plan)         # size-weighted average, class token never merged
    x = x + mlp(norm2(x))

The matching and the layouts are :mod:`rmeeto.merge`'s (ordered: original order kept; unordered:
[class, kept sources by score, destinations]); the class token sits at index 0 and stays there. Proportional
attention passes log(size) [batch, 1, 1, tokens] as the additive ``attn_mask`` of timm's ``Attention``, so its
fused ``scaled_dot_product_attention`` stays in use.

As in :mod:`rmeeto.merge`, :func:`apply_merge` swaps classes (every ``Block`` to :class:`MergingViTBlock`, the
model to :class:`MergingVisionTransformer`) and renames no parameter: stock checkpoints load untouched, and
:func:`remove_merge` restores the exact original classes. Merging layers follow ``MergeConfig.interval`` /
``odd`` counted from block 0 (block 0 can merge: its metric is its own post-attention state); the paper preset
(interval 1) merges in every block.

Differences from ToMe / the release: the even/odd split is over the class-free tokens (ToMe counts the class
token in it, which swaps which column parity are sources); the unordered layout keeps sources in score order
(ToMe re-sorts them by index); neither changes what a ViT computes beyond float rounding, as attention is
order-free once position embeddings are added.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Optional

import torch
from timm.layers import Attention
from timm.models.vision_transformer import Block, VisionTransformer

from rmeeto.merge import (
    BackbonePatch, LayerSchedule, MergeConfig, bipartite_match, merge_streams, merge_tokens, register_backbone_patch,
    requested_merges,
)
from rmeeto.models.vim import TokenState
from rmeeto.models.vit import ViTArch, is_vit
from rmeeto.shuffle import TokenShuffler

Tensor = torch.Tensor

__all__ = [
    "MergingViTBlock",
    "MergingVisionTransformer",
    "apply_merge",
    "remove_merge",
    "trace_tokens",
    "forward_tokens",
    "vit_merging_layers",
    "vit_schedule",
    "vit_flops",
]

CLS_INDEX = 0  # timm puts the class token first; ordered and unordered merges both keep it there


# ============================================================================================ schedule
def _check_config(config: MergeConfig) -> None:
    """Reject the MergeConfig fields that only mean something for a Vim."""
    if config.metric != "x":
        raise ValueError(
            f"metric={config.metric!r} is a Vim (Mamba mixer) metric; a ViT merges on its token state: use metric='x'"
        )
    if config.final_tokens is not None:
        raise ValueError(
            "final_tokens (the release's Vim 'compare' rule) does not apply to a ViT; give num_merged per layer instead"
        )


def vit_merging_layers(config: MergeConfig, depth: int) -> list[int]:
    """Blocks that merge: i % interval == 0 (``odd``: (i + 1) % interval == 0), block 0 included."""
    if config.odd:
        return [i for i in range(depth) if (i + 1) % config.interval == 0]
    return [i for i in range(depth) if i % config.interval == 0]


def vit_schedule(config: MergeConfig, num_tokens: int, depth: int) -> list[LayerSchedule]:
    """Static plan per block (tokens entering it, tokens after its merge; class index always 0). ``num_merged``
    is clamped to (tokens - 1) // 2 as in the Vim schedule."""
    _check_config(config)
    requested_at = requested_merges(config, vit_merging_layers(config, depth), "ViT", "blocks")
    out, n = [], num_tokens
    for i in range(depth):
        if i not in requested_at:
            out.append(LayerSchedule(i, False, n, CLS_INDEX, 0, 0, n, CLS_INDEX))
            continue
        requested = requested_at[i]
        r = max(0, min(requested, (n - 1) // 2))
        out.append(LayerSchedule(i, True, n, CLS_INDEX, r, requested, n - r, CLS_INDEX))
        n -= r
    return out


# ============================================================================================ patched classes
@dataclass(frozen=True)
class _ViTLayerMerge:
    num_merged: int  # 0 in non-merging blocks (they still use proportional attention)
    distance: str
    choose: int
    ordered: bool
    reduce: str
    prune: bool
    shuffle: Optional[TokenShuffler] = None  # one object per model; None in non-merging blocks


def size_bias(size: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    """Proportional attention: log(size) [batch, tokens, 1] -> additive attention mask [batch, 1, 1, tokens]
    (broadcast over heads and queries), in the attention's input dtype; None while no merge has happened."""
    return None if size is None else size.log().to(dtype)[:, None, None, :, 0]


class MergingViTBlock(Block):
    """timm's ``Block`` with a merge between the attention residual and the MLP.

    forward(x [batch, N, E], state: TokenState) -> (x [batch, N - r, E], TokenState); ``state.size``
    [batch, N, 1] (None until the first merge) weights the averages and the attention, ``state.source``
    [batch, N, N0] (optional) tracks which original tokens each token holds.
    """

    merge: _ViTLayerMerge

    def forward(self, x: Tensor, state: TokenState):
        cfg = self.merge
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=size_bias(state.size, x.dtype))))
        size, source = state.size, state.source
        if cfg.shuffle is not None and cfg.shuffle.active(self.training):
            x, size, source = cfg.shuffle.permute([x, size, source], CLS_INDEX)
        if cfg.num_merged > 0:
            plan = bipartite_match(
                x, CLS_INDEX, cfg.num_merged, distance=cfg.distance, choose=cfg.choose, ordered=cfg.ordered
            )
            (x,), size = merge_streams([x], size, plan, cfg.reduce, cfg.prune)
            if source is not None:
                source = merge_tokens(source, plan, "amax", prune=cfg.prune)
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x, TokenState(CLS_INDEX, size, None, source)


def forward_tokens(model: VisionTransformer, images: Tensor, track_source: bool = False) -> tuple[Tensor, TokenState]:
    """Patched or plain ViT: ``images`` [batch, C, H, W] -> (final-norm tokens [batch, N, E], TokenState).

    The class token is at ``state.cls_index`` (0); ``state.size`` [batch, N, 1] (None if nothing merged);
    ``state.source`` [batch, N, N0] 0/1 map to the original tokens when ``track_source``.
    """
    x = model.patch_embed(images)
    x = model._pos_embed(x)
    x = model.patch_drop(x)
    x = model.norm_pre(x)
    source = None
    if track_source:
        source = torch.eye(x.shape[1], device=x.device, dtype=x.dtype).expand(x.shape[0], -1, -1)
    state = TokenState(CLS_INDEX, None, None, source)
    for block in model.blocks:
        if isinstance(block, MergingViTBlock):
            x, state = block(x, state)
        else:
            x = block(x)
    return model.norm(x), state


class MergingVisionTransformer(VisionTransformer):
    """timm's ``VisionTransformer`` whose features pass a :class:`TokenState` between merging blocks."""

    def forward_features(self, x: Tensor, attn_mask: Optional[Tensor] = None, is_causal: bool = False) -> Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("a merging ViT takes no attn_mask / is_causal: a fixed mask cannot follow merged tokens")
        return forward_tokens(self, x)[0]

    def forward_tokens(self, x: Tensor, track_source: bool = False) -> tuple[Tensor, TokenState]:
        return forward_tokens(self, x, track_source)


# ============================================================================================ patch
def _check_model(model: VisionTransformer) -> None:
    if type(model) not in (VisionTransformer, MergingVisionTransformer):
        raise ValueError(
            f"{type(model).__name__} is not timm's VisionTransformer itself; its forward may differ, so it is not patched"
        )
    if model.num_prefix_tokens != 1 or model.cls_token is None:
        raise ValueError(
            f"merging needs exactly one prefix token, the class token (this ViT has {model.num_prefix_tokens} "
            f"prefix token(s), class token {'present' if model.cls_token is not None else 'absent'})"
        )
    if model.global_pool != "token" or model.attn_pool is not None:
        raise ValueError(
            f"merging needs the head to read the class token (global_pool='token'); this ViT pools "
            f"{model.global_pool!r}, which would average merged tokens without their sizes"
        )
    for i, block in enumerate(model.blocks):
        if type(block) not in (Block, MergingViTBlock) or not isinstance(block.attn, Attention):
            raise ValueError(
                f"block {i} is a {type(block).__name__} with {type(block.attn).__name__}; only timm's Block with "
                "Attention (pre-norm, additive attn_mask) can be patched"
            )


def apply_merge(model: VisionTransformer, config: MergeConfig) -> VisionTransformer:
    """Make a timm ViT merge tokens as ``config`` says (in place; returns it). Every block becomes a
    :class:`MergingViTBlock` (non-merging blocks still weight attention by size); no parameter is renamed.
    Calling again replaces the previous config; 0 tokens and no shuffling give timm's exact forward."""
    _check_model(model)
    remove_merge(model)
    sched = vit_schedule(config, model.patch_embed.num_patches + 1, len(model.blocks))
    clamped = [s for s in sched if s.merging and s.requested > s.num_merged]
    if clamped:
        s = clamped[0]
        warnings.warn(
            f"merging {s.requested} tokens at block {s.layer} is more than its {s.tokens_in} tokens allow; "
            f"clamped to {s.num_merged} ((tokens - 1) // 2) there and at {len(clamped) - 1} later block(s)",
            stacklevel=2,
        )
    shuffler = config.make_shuffler()
    prune = config.mode == "prune"
    for s, block in zip(sched, model.blocks):
        block.__class__ = MergingViTBlock
        block.merge = _ViTLayerMerge(
            s.num_merged, config.distance, config.choose, config.ordered, config.reduce, prune,
            shuffler if s.merging else None,
        )
    model.__class__ = MergingVisionTransformer
    model.merge_config = config
    model.merge_shuffler = shuffler
    return model


def remove_merge(model: VisionTransformer) -> VisionTransformer:
    """Undo :func:`apply_merge` (in place): timm's own classes come back."""
    for block in model.blocks:
        if isinstance(block, MergingViTBlock):
            block.__class__ = Block
            del block.merge
    if type(model) is MergingVisionTransformer:
        model.__class__ = VisionTransformer
    model.merge_config = None
    model.merge_shuffler = None
    return model


@torch.no_grad()
def trace_tokens(model: VisionTransformer, images: Tensor) -> list[dict]:
    """Per block, the token count and class index *entering* it (before its merge), then the count the head
    reads (``layer = depth``); as :func:`rmeeto.merge.trace_tokens` for a Vim."""
    records: list[dict] = []

    def hook(module, args):
        records.append({"layer": len(records), "tokens": args[0].shape[1], "cls_index": CLS_INDEX})

    handles = [block.register_forward_pre_hook(hook) for block in model.blocks]
    try:
        tokens, _ = forward_tokens(model, images)
    finally:
        for h in handles:
            h.remove()
    records.append({"layer": len(model.blocks), "tokens": tokens.shape[1], "cls_index": CLS_INDEX})
    return records


def vit_flops(arch: ViTArch, config: Optional[MergeConfig] = None) -> dict:
    """Multiply-adds of a (merged) ViT forward on the static schedule of ``config`` (None = unmerged).

    Per block with n tokens entering, C channels, hidden H = mlp_ratio * C: qkv 3nC^2, logits and weighted sum
    2n^2C, projection nC^2, MLP 2nCH on the n - r tokens left after the merge; a merging block adds its
    cosine matching (n_src * n_dst * C with n_src = ceil((n - 1) / 2), n_dst = (n - 1) // 2). Plus the patch
    embedding and the head. Returns ``total`` and ``gflops`` (multiply-adds / 1e9) and ``tokens_per_layer``
    (after each block's merge). Norms, softmax, GELU and the merge's gathers are not counted (as the paper).
    """
    c, h = arch.embed_dim, int(arch.embed_dim * arch.mlp_ratio)
    sched = vit_schedule(config if config is not None else MergeConfig(), arch.num_tokens, arch.depth)
    total = arch.num_patches * c * arch.in_chans * arch.patch_size**2 + c * arch.num_classes
    for s in sched:
        n = s.tokens_in
        total += 4 * n * c * c + 2 * n * n * c + 2 * s.tokens_out * c * h
        if s.merging and s.num_merged > 0:
            total += math.ceil((n - 1) / 2) * ((n - 1) // 2) * c
    return {"total": total, "gflops": total / 1e9, "tokens_per_layer": [s.tokens_out for s in sched]}


register_backbone_patch(BackbonePatch(is_vit, apply_merge, remove_merge, trace_tokens))

"""ViT / DeiT backbones, taken from timm as they are, for the paper's "why order matters" comparison.

Paper: "Training data-efficient image transformers & distillation through attention" (Touvron et al., 2021,
https://arxiv.org/abs/2012.12877). The models are timm's own ``VisionTransformer`` with timm's parameter names,
so the DeiT checkpoints (``deit_{tiny,small,base}_patch16_224-*.pth``) load as they are. The class token is at
index 0 and the head reads it (``global_pool="token"``).

This module only describes and builds them: a registry of named :class:`ViTConfig` rows (the DeiT names, plus
two tiny ViTs for tests and the digits demo) consulted by :func:`rmeeto.create_model` / ``get_config`` /
``list_models``. Token merging for any timm ViT with a class token lives in :mod:`rmeeto.merge_vit`.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Optional

import torch.nn as nn

from rmeeto.checkpoint import FilterResult, plain_filter, register_checkpoint_filter
from rmeeto.models._meta import NamedModelConfig

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer

__all__ = ["ViTArch", "ViTConfig", "VIT_MODELS", "is_vit", "create_vit", "register_vit", "checkpoint_filter_fn",
           "is_vit_state_dict", "vit_arch_facts", "match_vit"]


# timm is imported only when a ViT is built or met (3 s of start-up on a 2-core machine otherwise, for every
# ``import rmeeto``): a model that is a timm ViT exists only once timm's module is loaded
_TIMM_VIT = "timm.models.vision_transformer"


def is_vit(model: nn.Module) -> bool:
    """Whether ``model`` is a timm ``VisionTransformer`` (DDP / compiled wrappers are not looked through)."""
    module = sys.modules.get(_TIMM_VIT)
    return module is not None and isinstance(model, module.VisionTransformer)


@dataclass(frozen=True)
class ViTArch:
    """Architecture of a plain ViT with one class token (timm ``VisionTransformer`` argument names)."""

    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    in_chans: int = 3

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        """Tokens entering block 0: the patches and the class token (at index 0)."""
        return self.num_patches + 1

    def timm_kwargs(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ViTConfig(NamedModelConfig):
    """Everything about a named ViT that is not architecture (mirrors :class:`rmeeto.models.ModelConfig`).

    timm_name: build through ``timm.create_model(timm_name)`` (the DeiT rows); None = build
        ``VisionTransformer(**arch.timm_kwargs())`` directly (the tiny rows).
    paper_merge: the R-MeeTo Table 4 defaults read by :meth:`rmeeto.MergeConfig.paper`: ``num_merged`` in every
        block (5 / 11 / 11 for Ti / S / B; the release's registry default for B is 17).
    """

    arch: ViTArch
    timm_name: Optional[str] = None
    backbone: str = "vit"

    @property
    def input_size(self) -> tuple[int, int, int]:
        return (self.arch.in_chans, self.arch.img_size, self.arch.img_size)

    def paper_merge_settings(self) -> dict[str, Any]:
        """MergeConfig fields of the paper preset: ``num_merged`` tokens in every block (interval 1, block 0
        included: the metric is the block's own post-attention state), ordered, no final-count rule."""
        return dict(num_merged=self.paper_merge.get("num_merged", 0), interval=1, ordered=True)


VIT_MODELS: dict[str, ViTConfig] = {}


def register_vit(cfg: ViTConfig) -> ViTConfig:
    VIT_MODELS[cfg.name] = cfg
    return cfg


# --------------------------------------------------------------------------------- DeiT (timm's models)
register_vit(ViTConfig(
    "deit_tiny_patch16_224", ViTArch(embed_dim=192, num_heads=3), timm_name="deit_tiny_patch16_224",
    description="DeiT-Ti (timm)", checkpoint="deit_tiny_patch16_224-a1311bcf.pth", top1=72.2,
    paper_merge=dict(num_merged=5, epochs=3),
))
register_vit(ViTConfig(
    "deit_small_patch16_224", ViTArch(embed_dim=384, num_heads=6), timm_name="deit_small_patch16_224",
    description="DeiT-S (timm)", checkpoint="deit_small_patch16_224-cd65a155.pth", top1=79.8,
    paper_merge=dict(num_merged=11, epochs=3),
))
register_vit(ViTConfig(
    "deit_base_patch16_224", ViTArch(embed_dim=768, num_heads=12), timm_name="deit_base_patch16_224",
    description="DeiT-B (timm)", checkpoint="deit_base_patch16_224-b5f2ef4d.pth", top1=81.8,
    paper_merge=dict(num_merged=11, epochs=3),
))
# --------------------------------------------------------------------------------- small models
_DIGITS_NORM = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=1.0)
register_vit(ViTConfig(
    "vit_test_patch4_16",
    ViTArch(img_size=16, patch_size=4, embed_dim=32, depth=4, num_heads=2, num_classes=10),
    description="tiny ViT for unit tests (16x16 input, 17 tokens)", **_DIGITS_NORM,
    paper_merge=dict(num_merged=2),
))
register_vit(ViTConfig(
    # 0.51M parameters as vim_digits_patch4_32 (0.50M); r = 2 in each of 10 blocks ends at 45 tokens, as the
    # Vim's r = 4 at its 5 merging layers
    "vit_digits_patch4_32",
    ViTArch(img_size=32, patch_size=4, embed_dim=64, depth=10, num_heads=4, num_classes=10),
    description="small ViT for the digits demo, sized like vim_digits_patch4_32 (32x32 input, 65 tokens)",
    **_DIGITS_NORM, paper_merge=dict(num_merged=2),
))


def is_vit_state_dict(state_dict) -> bool:
    """True for a timm ViT's weights (``blocks.N.attn.qkv``), whatever prefix (``module.``) they carry."""
    return any(k.endswith("blocks.0.attn.qkv.weight") for k in state_dict)


def vit_arch_facts(state_dict) -> dict[str, Optional[int]]:
    """Architecture numbers read off a timm ViT state dict (keys stripped of prefixes), as
    :func:`rmeeto.models.vim.arch_facts` reads a Vim's: embed_dim, depth, patch_size, in_chans, img_size (a square
    grid after one class token), num_classes (0 without a head), num_tokens; None where a tensor is absent.
    num_heads leaves no trace in the shapes."""
    facts: dict[str, Optional[int]] = dict.fromkeys(("embed_dim", "depth", "patch_size", "in_chans", "img_size",
                                                     "num_classes", "num_tokens", "d_state"))
    proj = state_dict.get("patch_embed.proj.weight")
    if proj is not None and proj.dim() == 4:
        facts["embed_dim"], facts["in_chans"], facts["patch_size"] = proj.shape[0], proj.shape[1], proj.shape[-1]
    blocks = {int(k.split(".")[1]) for k in state_dict if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    facts["depth"] = max(blocks) + 1 if blocks else None
    head = state_dict.get("head.weight")
    facts["num_classes"] = head.shape[0] if head is not None else 0
    pos = state_dict.get("pos_embed")
    if pos is not None and pos.dim() == 3:
        facts["num_tokens"] = pos.shape[1]
        side = math.isqrt(pos.shape[1] - 1)
        if side * side == pos.shape[1] - 1 and facts["patch_size"]:
            facts["img_size"] = side * facts["patch_size"]
    return facts


def match_vit(facts) -> tuple[Optional[str], dict[str, int]]:
    """(registered ViT with the structure of ``facts``, create_model overrides for img_size / num_classes), or
    (None, {}); the entry needing fewest overrides wins, the earlier on a tie."""
    best = None
    for name, cfg in VIT_MODELS.items():
        if any(facts.get(k) is not None and getattr(cfg.arch, k) != facts[k]
               for k in ("embed_dim", "depth", "patch_size", "in_chans")):
            continue
        overrides = {k: facts[k] for k in ("img_size", "num_classes")
                     if facts.get(k) is not None and getattr(cfg.arch, k) != facts[k]}
        if best is None or len(overrides) < len(best[1]):
            best = (name, overrides)
    return best if best is not None else (None, {})


def checkpoint_filter_fn(state_dict, model: VisionTransformer):
    """Checkpoint filter for a timm ViT (:func:`rmeeto.load_checkpoint` uses it for every ``VisionTransformer``):
    :func:`~rmeeto.checkpoint.plain_filter`, then a ``pos_embed`` [1, 1 + h*w, E] made for another grid is
    resampled to the model's (class token first, kept as is; bicubic on the patch part, timm's
    ``resample_abs_pos_embed``), and a classifier for another number of classes is left out (re-initialised)."""
    result = plain_filter(state_dict, model)
    weights, notes = dict(result.state_dict), list(result.notes)
    resized, head_reset, skipped = None, False, ()
    pos = weights.get("pos_embed")
    if pos is not None and pos.shape != model.pos_embed.shape and pos.ndim == 3 and pos.shape[-1] == model.embed_dim:
        prefix = model.num_prefix_tokens
        old_side = math.isqrt(pos.shape[1] - prefix)
        if old_side * old_side == pos.shape[1] - prefix:
            from timm.layers import resample_abs_pos_embed

            new_grid = list(model.patch_embed.grid_size)
            weights["pos_embed"] = resample_abs_pos_embed(pos, new_grid, [old_side, old_side], num_prefix_tokens=prefix)
            resized = (pos.shape[1], model.pos_embed.shape[1])
            notes.append(f"pos_embed resampled from {old_side}x{old_side} to {new_grid[0]}x{new_grid[1]} patches")
    head = weights.get("head.weight")
    if head is not None and model.num_classes and head.shape[0] != model.num_classes:
        weights.pop("head.weight"), weights.pop("head.bias", None)
        head_reset, skipped = True, ("head.weight", "head.bias")
        notes.append(f"classifier for {head.shape[0]} classes left out; the model's {model.num_classes}-class head "
                     "is re-initialised")
    return FilterResult(weights, notes, skipped, resized, head_reset)


def create_vit(name: str, pretrained: bool = False, checkpoint_path: Optional[str] = None,
               **overrides) -> VisionTransformer:
    """Build a registered ViT as timm's ``VisionTransformer`` (timm's parameter names). ``overrides`` are timm
    constructor arguments (``num_classes``, ``drop_path_rate``, ``img_size``, ...). ``checkpoint_path`` loads
    weights strictly and weights-only (:func:`rmeeto.load_checkpoint`). ``pretrained=True`` without it takes
    timm's own pretrained weights of the DeiT (timm's configs and download through the Hugging Face hub cache;
    ``HF_HUB_OFFLINE=1`` reads only the cache), with a one-line ValueError when they cannot be had."""
    cfg = VIT_MODELS.get(name)
    if cfg is None:
        raise ValueError(f"unknown ViT model {name!r}; available: {', '.join(sorted(VIT_MODELS))}")
    from_timm = pretrained and checkpoint_path is None
    if from_timm and cfg.timm_name is None:
        raise ValueError(f"{name} has no published weights: give checkpoint_path")
    if cfg.timm_name is not None:
        import timm

        try:
            model = timm.create_model(cfg.timm_name, pretrained=from_timm, **overrides)
        except Exception as exc:  # hub/network/cache errors of many types: one line naming the way out
            if not from_timm:
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            hint = f" (the official file is {cfg.checkpoint})" if cfg.checkpoint else ""
            raise ValueError(f"cannot get timm's pretrained weights of {cfg.timm_name}: {type(exc).__name__}: "
                             f"{first}; give checkpoint_path{hint}") from None
    else:
        from timm.models.vision_transformer import VisionTransformer

        model = VisionTransformer(**{**cfg.arch.timm_kwargs(), **overrides})
    # the rmeeto surface shared with VisionMamba (timm's own dict is replaced: rmeeto reads input_size etc. here)
    model.pretrained_cfg = cfg
    model.num_tokens = model.patch_embed.num_patches + model.num_prefix_tokens
    model.cls_position = 0
    if checkpoint_path is not None:
        from rmeeto.checkpoint import load_checkpoint

        load_checkpoint(model, checkpoint_path)
    return model


register_checkpoint_filter(f"{_TIMM_VIT}.VisionTransformer", checkpoint_filter_fn)

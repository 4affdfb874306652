"""Model registry: named Vim configurations, ``create_model`` and ``list_models``.

Each entry's architecture is a :class:`VimArch`; weight and preprocessing metadata (official file name,
mean/std, input size, crop) live in :class:`ModelConfig`. Checkpoint inspection (which registered model a file
fits) is here too; the generic, safe file I/O is :mod:`rmeeto.checkpoint`. Every model is also registered with timm
(``timm.create_model("vim_small_patch16_224")`` works once ``rmeeto`` is imported).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import torch

from rmeeto.checkpoint import (
    CheckpointError, PathLike, describe_checkpoint, fit_weights, load_checkpoint, read_checkpoint, register_fit_hint,
    unwrap_state_dict,
)
from rmeeto.models._arch import CLS_POSITIONS, VimArch
from rmeeto.models._registry import (
    IMAGENET_MEAN, IMAGENET_STD, ModelConfig, get_config, list_models, match_model, register_model,
)
from rmeeto.models.videomamba import VideoMamba
from rmeeto.models.vim import VisionMamba
from rmeeto.models._match import fit_hint, match_weights
from rmeeto.models import vit as _vit

register_fit_hint(fit_hint)  # load errors name the registered model a checkpoint that does not fit looks like

__all__ = [
    "ModelConfig", "VimArch", "CLS_POSITIONS", "create_model", "list_models", "get_config", "register_model",
    "VisionMamba", "VideoMamba", "arch_of", "inspect_checkpoint", "match_model", "match_weights", "IMAGENET_MEAN",
    "IMAGENET_STD",
]

# --------------------------------------------------------------------------------- official models
register_model(ModelConfig(
    "vim_tiny_patch16_224", VimArch(embed_dim=192, depth=24),
    description="Vim-Ti (official midclstok)", checkpoint="vim_t_midclstok_76p1acc.pth", top1=76.1,
    paper_merge=dict(num_merged=5, epochs=30, compare=11),
))
register_model(ModelConfig(
    "vim_small_patch16_224", VimArch(embed_dim=384, depth=24),
    description="Vim-S (official midclstok)", checkpoint="vim_s_midclstok_80p5acc.pth", top1=80.5,
    paper_merge=dict(num_merged=11, epochs=15, compare=11),
))
register_model(ModelConfig(
    "vim_base_patch16_224", VimArch(embed_dim=768, depth=24),
    description="Vim-B (official midclstok; the file holds EMA weights)", checkpoint="vim_b_midclstok_81p9acc.pth",
    top1=81.9, paper_merge=dict(num_merged=11, epochs=15, model_ema=True, compare=11),
))
# --------------------------------------------------------------------------------- small models
# Same architecture at toy scale: for tests and for the embedded digits demo (no download needed).
_DIGITS_NORM = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=1.0)
register_model(ModelConfig(
    "vim_test_patch4_16", VimArch(img_size=16, patch_size=4, embed_dim=32, depth=4, num_classes=10),
    description="tiny Vim for unit tests (16x16 input, 17 tokens)", **_DIGITS_NORM,
    paper_merge=dict(num_merged=2),
))
register_model(ModelConfig(
    "vim_digits_patch4_32", VimArch(img_size=32, patch_size=4, embed_dim=64, depth=12, num_classes=10),
    description="small Vim for the embedded digits demo (32x32 input, 65 tokens)", **_DIGITS_NORM,
    paper_merge=dict(num_merged=4),
))

# --------------------------------------------------------------------------------- VideoMamba
# Class token first, the two scan directions summed (no /2), VideoMamba's from-scratch init; same parameter
# names as Vim. Merge presets have no final-token (compare) rule: the release's VideoMamba merge lacks it.
_VIDEOMAMBA = dict(cls_position="first", divide_out=False, init="videomamba")
register_model(ModelConfig(
    "videomamba_tiny_patch16_224", VimArch(embed_dim=192, depth=24, **_VIDEOMAMBA),
    description="VideoMamba-Ti on ImageNet-1k", checkpoint="videomamba_t16_in1k_res224.pth", top1=76.9,
    paper_merge=dict(num_merged=5, epochs=30),
))
register_model(ModelConfig(
    "videomamba_small_patch16_224", VimArch(embed_dim=384, depth=24, **_VIDEOMAMBA),
    description="VideoMamba-S on ImageNet-1k", checkpoint="videomamba_s16_in1k_res224.pth", top1=81.2,
    paper_merge=dict(num_merged=11, epochs=15),
))
register_model(ModelConfig(
    "videomamba_middle_patch16_224", VimArch(embed_dim=576, depth=32, **_VIDEOMAMBA),
    description="VideoMamba-M on ImageNet-1k (576 wide, depth 32)", checkpoint="videomamba_m16_in1k_res224.pth",
    paper_merge=dict(num_merged=11, epochs=15),
))
register_model(ModelConfig(
    "videomamba_base_patch16_224", VimArch(embed_dim=768, depth=24, **_VIDEOMAMBA),
    description="VideoMamba-B on ImageNet-1k (R-MeeTo's table 2)", checkpoint="videomamba_b16_in1k_res224.pth",
    top1=82.7, paper_merge=dict(num_merged=11, epochs=15),
))
# Kinetics-400 video models: 8 frames, tubelet 1, 1 + 8 x 196 = 1569 tokens. top1 is the K400 top-1 (one clip
# of 12 views averaged). Test views: short side resized to 224, full-frame crops (crop_pct 1), bilinear.
_K400 = dict(crop_pct=1.0, interpolation="bilinear")
register_model(ModelConfig(
    "videomamba_tiny_patch16_224_f8", VimArch(embed_dim=192, depth=24, num_classes=400, num_frames=8, **_VIDEOMAMBA),
    description="VideoMamba-Ti on Kinetics-400 (8 frames)", checkpoint="videomamba_t16_k400_f8_res224.pth",
    top1=76.9, paper_merge=dict(num_merged=88, epochs=30), **_K400,
))
register_model(ModelConfig(
    "videomamba_small_patch16_224_f8", VimArch(embed_dim=384, depth=24, num_classes=400, num_frames=8, **_VIDEOMAMBA),
    description="VideoMamba-S on Kinetics-400 (8 frames)", checkpoint="videomamba_s16_k400_f8_res224.pth",
    top1=79.3, paper_merge=dict(num_merged=88, epochs=15), **_K400,
))
register_model(ModelConfig(
    "videomamba_middle_patch16_224_f8", VimArch(embed_dim=576, depth=32, num_classes=400, num_frames=8, **_VIDEOMAMBA),
    description="VideoMamba-M on Kinetics-400 (8 frames)", checkpoint="videomamba_m16_k400_f8_res224.pth",
    top1=80.5, paper_merge=dict(num_merged=88, epochs=15), **_K400,
))
register_model(ModelConfig(
    "videomamba_test_patch4_16_f4",
    VimArch(img_size=16, patch_size=4, embed_dim=32, depth=4, num_classes=10, num_frames=4, **_VIDEOMAMBA),
    description="tiny VideoMamba for unit tests (4 frames of 16x16, 65 tokens)", **_DIGITS_NORM,
    paper_merge=dict(num_merged=8),
))
# The video demo's model: tubelets of 2 frames, so one token sees a patch at two instants and the direction of
# a small moving square is a local feature (with tubelet 1 this width-32, depth-4 model learns the direction
# only slowly from a few hundred clips: it must relate tokens 16 positions apart).
register_model(ModelConfig(
    "videomamba_demo_patch4_16_f8",
    VimArch(img_size=16, patch_size=4, embed_dim=32, depth=4, num_classes=4, num_frames=8, tubelet_size=2,
            **_VIDEOMAMBA),
    description="tiny VideoMamba for the synthetic video demo (8 frames of 16x16 in tubelets of 2, 65 tokens)",
    **_DIGITS_NORM, paper_merge=dict(num_merged=16),
))


def create_model(name: str, pretrained: bool = False, checkpoint_path: Optional[str] = None, **overrides) -> VisionMamba:
    """Build a registered model. ``overrides`` use the official constructor names (``img_size``, ``patch_size``,
    ``embed_dim``, ``depth``, ``num_classes``, ``drop_path_rate``, ...; video models also ``num_frames``,
    ``kernel_size`` (the tubelet), ``fc_drop_rate``; ``channels`` is VideoMamba's name for ``in_chans``). Video
    models (``arch.num_frames`` set) are :class:`VideoMamba`, the others :class:`VisionMamba`. ``checkpoint_path`` loads weights
    (strict, weights-only, a local file or ``hf-hub:...``; see :func:`rmeeto.load_checkpoint`). This is the
    builder: published weights by name (``pretrained=True``, ``model.tag``) are :func:`rmeeto.create_model`
    (:func:`rmeeto.hub.create_model`), which builds through here. ``model.arch`` describes what was built,
    overrides included. ViT/DeiT names (:mod:`rmeeto.models.vit`) build timm's VisionTransformer."""
    if name in _vit.VIT_MODELS:  # timm's VisionTransformer (rmeeto.models.vit)
        return _vit.create_vit(name, pretrained, checkpoint_path, **overrides)
    cfg = get_config(name)
    if pretrained and checkpoint_path is None:
        hint = f" (the official file is {cfg.checkpoint})" if cfg.checkpoint else ""
        raise ValueError(f"rmeeto.models.create_model(pretrained=True) needs checkpoint_path{hint}; "
                         "rmeeto.create_model downloads published weights")
    if "channels" in overrides:  # the official VideoMamba constructors' name for in_chans
        overrides["in_chans"] = overrides.pop("channels")
    model_cls = VideoMamba if cfg.arch.is_video else VisionMamba
    model = model_cls(**{**cfg.arch.constructor_kwargs(), **overrides})
    model.pretrained_cfg = cfg
    if checkpoint_path is not None:
        load_checkpoint(model, checkpoint_path)
    return model


def arch_of(model: Union[str, VisionMamba, VimArch, Mapping[str, Any]]) -> VimArch:
    """The :class:`VimArch` of a registered model name, a built model, a VimArch (returned as is) or a dict of
    constructor arguments (defaults: Vim-Ti's; settings that are not architecture are ignored)."""
    if isinstance(model, VimArch):
        return model
    if isinstance(model, str):
        return get_config(model).arch
    if isinstance(getattr(model, "arch", None), VimArch):
        return model.arch
    if isinstance(model, Mapping):
        return VimArch.from_kwargs(model)
    raise TypeError(
        f"expected a registered model name, a VisionMamba, a VimArch or a dict of architecture arguments, "
        f"got {type(model).__name__}"
    )


def inspect_checkpoint(path: PathLike) -> dict[str, Any]:
    """Describe a checkpoint without building a model: :func:`rmeeto.checkpoint.describe_checkpoint` plus
    arch (embed_dim, depth, patch_size, in_chans, img_size, num_classes, num_tokens, d_state read off the
    shapes, None where absent; a ViT's read by :func:`rmeeto.models.vit.vit_arch_facts`), backbone ("vim" for
    Vim / VideoMamba weights, "vit" for a timm ViT's), model (the registered name of that structure, or None),
    model_overrides (create_model arguments for another img_size / num_classes) and misfit (None, or why the
    weights would not load into that model after all: a tensor whose shape or dtype the structure's shapes did
    not reveal, a missing or extra key; checked against the model built on the meta device)."""
    path = Path(path)
    raw = read_checkpoint(path)
    info = describe_checkpoint(path, raw)
    weights, _ = unwrap_state_dict(raw)  # describe_checkpoint has already refused a file without weights
    backbone, facts, model, overrides = match_weights(weights)
    report = {k: facts[k] for k in ("embed_dim", "depth", "patch_size", "in_chans", "img_size", "num_classes",
                                    "num_tokens", "d_state")}
    misfit = None
    if model is not None:  # the shapes read name a model: check every tensor against it, as a load would
        with torch.device("meta"):
            built = create_model(model, **overrides)
        try:
            fit_weights(built, weights, "", hint=False)
        except CheckpointError as exc:
            misfit = str(exc)
    out = {}
    for key, value in info.items():  # same key order as before the split: arch and model after the dtypes
        out[key] = value
        if key == "dtypes":
            out.update(backbone=backbone, arch=report, model=model, model_overrides=overrides, misfit=misfit)
    return out

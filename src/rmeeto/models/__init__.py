"""Model registry: named Vim configurations, ``create_model`` and ``list_models``.

Architecture arguments live in the registry functions; weight and preprocessing metadata (official file
name, mean/std, input size, crop) live in :class:`ModelConfig`. Every model is also registered with timm
(``timm.create_model("vim_small_patch16_224")`` works once ``rmeeto`` is imported).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from rmeeto.models.vim import VisionMamba

__all__ = ["ModelConfig", "create_model", "list_models", "get_config", "register_model", "VisionMamba"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelConfig:
    """Everything about a named model that is not architecture."""

    name: str
    arch: dict[str, Any]
    description: str = ""
    checkpoint: Optional[str] = None  # official file name, for users who hold it
    top1: Optional[float] = None  # published ImageNet-1k top-1 of that file
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    paper_merge: dict[str, Any] = field(default_factory=dict)  # R-MeeTo defaults, read by MergeConfig.paper

    @property
    def input_size(self) -> tuple[int, int, int]:
        s = self.arch.get("img_size", 224)
        return (self.arch.get("in_chans", 3), s, s)


_REGISTRY: dict[str, ModelConfig] = {}


def register_model(cfg: ModelConfig) -> ModelConfig:
    _REGISTRY[cfg.name] = cfg
    return cfg


# --------------------------------------------------------------------------------- official models
register_model(ModelConfig(
    "vim_tiny_patch16_224", dict(embed_dim=192, depth=24),
    description="Vim-Ti (official midclstok)", checkpoint="vim_t_midclstok_76p1acc.pth", top1=76.1,
    paper_merge=dict(num_merged=5, epochs=30),
))
register_model(ModelConfig(
    "vim_small_patch16_224", dict(embed_dim=384, depth=24),
    description="Vim-S (official midclstok)", checkpoint="vim_s_midclstok_80p5acc.pth", top1=80.5,
    paper_merge=dict(num_merged=11, epochs=15),
))
register_model(ModelConfig(
    "vim_base_patch16_224", dict(embed_dim=768, depth=24),
    description="Vim-B (official midclstok; the file holds EMA weights)", checkpoint="vim_b_midclstok_81p9acc.pth",
    top1=81.9, paper_merge=dict(num_merged=11, epochs=15, model_ema=True),
))
# --------------------------------------------------------------------------------- small models
# Same architecture at toy scale: for tests and for the embedded digits demo (no download needed).
_DIGITS_NORM = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=1.0)
register_model(ModelConfig(
    "vim_test_patch4_16", dict(img_size=16, patch_size=4, embed_dim=32, depth=4, num_classes=10),
    description="tiny Vim for unit tests (16x16 input, 17 tokens)", **_DIGITS_NORM,
    paper_merge=dict(num_merged=2),
))
register_model(ModelConfig(
    "vim_digits_patch4_32", dict(img_size=32, patch_size=4, embed_dim=64, depth=12, num_classes=10),
    description="small Vim for the embedded digits demo (32x32 input, 65 tokens)", **_DIGITS_NORM,
    paper_merge=dict(num_merged=4),
))


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``."""
    import fnmatch

    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_config(name: str) -> ModelConfig:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}") from None


def create_model(name: str, pretrained: bool = False, checkpoint_path: Optional[str] = None, **overrides) -> VisionMamba:
    """Build a registered model. ``overrides`` use the official constructor names (``img_size``, ``patch_size``,
    ``embed_dim``, ``depth``, ``num_classes``, ``drop_path_rate``, ...). ``checkpoint_path`` loads weights
    (strict, weights-only; a local file or ``hf-hub:OWNER/REPO/FILE[@REV]``; see :func:`rmeeto.load_checkpoint`).
    ``pretrained=True`` loads the published weights of ``name`` or ``name.tag`` from the hub (see
    :mod:`rmeeto.hub`); an R-MeeTo tag also applies the merge config it was re-trained with, and
    ``checkpoint_path`` then replaces the table's file."""
    base, _, tag = name.partition(".")  # "model.tag": the tag names published weights
    cfg = get_config(base)
    model = VisionMamba(**{**cfg.arch, **overrides})
    model.pretrained_cfg = cfg
    if pretrained or tag:
        from rmeeto.hub import get_pretrained, load_pretrained

        get_pretrained(name)  # an unknown tag is an error even without pretrained=True
        if pretrained:
            load_pretrained(model, name, checkpoint_path)
            return model
    if checkpoint_path is not None:
        from rmeeto.checkpoint import load_checkpoint

        load_checkpoint(model, checkpoint_path)
    return model


def _register_with_timm() -> None:
    """Expose every model to ``timm.create_model``. Silently skipped if timm is missing or incompatible."""
    try:
        from timm.models import register_model as timm_register
        from timm.models._registry import _model_entrypoints  # noqa: F401
    except Exception:
        return

    def make(name: str) -> Callable[..., VisionMamba]:
        def fn(pretrained: bool = False, **kwargs):
            tag = kwargs.pop("pretrained_cfg", None)  # timm passes the ".tag" of "model.tag" here
            for key in ("pretrained_cfg_overlay", "cache_dir", "features_only"):
                kwargs.pop(key, None)  # timm bookkeeping, not architecture
            checkpoint_path = kwargs.pop("checkpoint_path", None) or None
            full = f"{name}.{tag}" if isinstance(tag, str) and tag else name
            return create_model(full, pretrained=pretrained, checkpoint_path=checkpoint_path, **kwargs)

        fn.__name__ = name
        fn.__module__ = "rmeeto.models"
        fn.__doc__ = f"{get_config(name).description} (rmeeto)"
        return fn

    from timm.models import _registry

    for name in _REGISTRY:
        if name not in _registry._model_entrypoints:
            timm_register(make(name))


_register_with_timm()

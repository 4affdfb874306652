"""The registry of named models: :class:`ModelConfig` entries, and matching a checkpoint to one of them.

Architecture lives in :class:`~rmeeto.models.VimArch`; weight and preprocessing metadata (official file name,
mean/std, input size, crop) live in :class:`ModelConfig`. The entries themselves are registered in
:mod:`rmeeto.models`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

from rmeeto.models import vit as _vit
from rmeeto.models._arch import VimArch
from rmeeto.models._meta import IMAGENET_MEAN, IMAGENET_STD, NamedModelConfig

__all__ = ["ModelConfig", "register_model", "get_config", "list_models", "match_model",
           "IMAGENET_MEAN", "IMAGENET_STD"]



@dataclass(frozen=True)
class ModelConfig(NamedModelConfig):
    """A named model: its architecture (:class:`VimArch`) and everything about it that is not architecture
    (the fields of :class:`~rmeeto.models._meta.NamedModelConfig`)."""

    arch: VimArch

    def __post_init__(self):
        if not isinstance(self.arch, VimArch):
            raise TypeError(f"ModelConfig.arch must be a VimArch, got {type(self.arch).__name__}")

    @property
    def input_size(self) -> tuple[int, int, int]:
        return self.arch.input_size


_REGISTRY: dict[str, ModelConfig] = {}


def register_model(cfg: ModelConfig) -> ModelConfig:
    _REGISTRY[cfg.name] = cfg
    return cfg


def list_models(pattern: str = "*", backbone: Optional[str] = None) -> list[str]:
    """Registered model names matching a shell-style ``pattern``; ``backbone`` "vim", "vit" (the timm ViT/DeiT
    rows of :mod:`rmeeto.models.vit`) or None (default) for both."""
    tables = {"vim": list(_REGISTRY), "vit": list(_vit.VIT_MODELS), None: [*_REGISTRY, *_vit.VIT_MODELS]}
    if backbone not in tables:
        raise ValueError(f"backbone={backbone!r} is not valid; choose from 'vim', 'vit', None")
    return sorted(n for n in tables[backbone] if fnmatch.fnmatch(n, pattern))


def get_config(name: str):
    """The :class:`ModelConfig` of a registered Vim, or the ``ViTConfig`` of a ViT/DeiT row."""
    if name in _vit.VIT_MODELS:
        return _vit.VIT_MODELS[name]
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}") from None


# facts that must agree for a checkpoint to be a registered model; img_size, num_classes and num_frames may be
# overridden
_STRUCTURE = ("embed_dim", "depth", "patch_size", "in_chans", "d_state", "expand", "d_conv", "dt_proj_rank",
              "tubelet_size")


def match_model(facts: Mapping[str, Optional[int]]) -> tuple[Optional[str], dict[str, int]]:
    """(registered model with the same structure, create_model overrides for img_size / num_classes /
    num_frames), or
    (None, {}). ``facts``: architecture numbers read off a checkpoint (None = unknown, not compared), as
    :func:`rmeeto.models.vim.arch_facts` returns them; its ``dt_rank`` is compared with the resolved rank."""
    if facts.get("embed_dim") is None:
        return None, {}
    facts = {**facts, "dt_proj_rank": facts.get("dt_rank")}
    best: Optional[tuple[int, str, dict[str, int]]] = None
    # registration order: on a tie the earlier entry wins (Vim before the image VideoMamba models, which have
    # the same shapes); a video model only matches facts that show frames
    for name, cfg in _REGISTRY.items():
        arch = cfg.arch
        if arch.is_video != (facts.get("num_frames") is not None):
            continue
        if any(facts.get(k) is not None and getattr(arch, k) != facts[k] for k in _STRUCTURE):
            continue
        overrides = {k: facts[k] for k in ("img_size", "num_classes", "num_frames")
                     if facts.get(k) is not None and getattr(arch, k) != facts[k]}
        if best is None or len(overrides) < best[0]:
            best = (len(overrides), name, overrides)
    return (best[1], best[2]) if best else (None, {})

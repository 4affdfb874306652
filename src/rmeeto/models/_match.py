"""Which registered model a state dict is, for either backbone: what ``rmeeto info`` reports and what a load error
suggests when a checkpoint does not fit the model it was given to."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import torch

from rmeeto.checkpoint import strip_prefixes
from rmeeto.models import vit as _vit
from rmeeto.models._registry import match_model
from rmeeto.models.vim import arch_facts

__all__ = ["match_weights", "fit_hint"]


def match_weights(state_dict: Mapping[str, Any]) -> tuple[str, dict[str, Optional[int]], Optional[str], dict]:
    """(backbone, facts, registered model, create_model overrides) of a state dict: a timm ViT's ("vit", read by
    :func:`rmeeto.models.vit.vit_arch_facts`, matched among the ViT rows) or a Vim / VideoMamba's ("vim",
    :func:`rmeeto.models.vim.arch_facts`, :func:`rmeeto.models.match_model`). Prefixes (``module.``) are looked
    through; the model is None when no registered structure fits."""
    weights = {strip_prefixes(k): v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    if _vit.is_vit_state_dict(weights):
        facts = _vit.vit_arch_facts(weights)
        return ("vit", facts, *_vit.match_vit(facts))
    facts = arch_facts(weights)
    return ("vim", facts, *match_model(facts))


def fit_hint(state_dict: Mapping[str, Any]) -> str:
    """' (the checkpoint looks like <registered model>[, overrides])' for a load error, or ''."""
    try:
        _, _, name, overrides = match_weights(state_dict)
    except Exception:  # a hint must never hide the error it decorates
        return ""
    if name is None:
        return ""
    extra = "".join(f", {k}={v}" for k, v in overrides.items())
    return f" (the checkpoint looks like {name}{extra})"

"""Weights from the Hugging Face hub: the pretrained table, ``hf-hub:`` paths and pretrained tags.

Every published weight file rmeeto knows sits in one table, :data:`PRETRAINED`: which registered model it fits,
its tag (``vim_small_patch16_224.in1k``, ``vim_small_patch16_224.rmeeto_r11_in1k``), the hub repository and
file, and for the re-trained R-MeeTo weights the merge config they were trained with. A bare model name means
its first (default) row, as in timm::

    rmeeto.create_model("vim_small_patch16_224", pretrained=True)                    # official Vim-S
    rmeeto.create_model("vim_small_patch16_224.rmeeto_r11_in1k", pretrained=True)    # merged + re-trained
    timm.create_model("vim_small_patch16_224.rmeeto_r11_in1k", pretrained=True)      # the same through timm

Any checkpoint argument also takes ``hf-hub:OWNER/REPO/PATH/IN/REPO[@REVISION]`` (:func:`resolve`). Files go
through ``huggingface_hub.hf_hub_download``: the standard cache (``HF_HUB_CACHE`` / ``HF_HOME``), and with
``HF_HUB_OFFLINE=1`` only the cache is read. Failures are one-line :class:`HubError` messages naming the repo
and file. DeiT teachers need no row here: timm's own configs download them
(``timm.create_model("deit_small_patch16_224", pretrained=True)``).

File names inside the R-MeeTo repository's folders are not checked (no listing offline); the R-MeeTo trainer
writes its best epoch as ``model_best.pth``, which is what the table assumes. If a name is wrong, override it
without editing code: ``RMEETO_WEIGHTS_<TAG>=hf-hub:...`` (``<TAG>`` = the full tag upper-cased, ``.`` -> ``__``,
e.g. ``RMEETO_WEIGHTS_VIM_SMALL_PATCH16_224__RMEETO_R11_IN1K``) or ``create_model(tag, pretrained=True,
checkpoint_path="hf-hub:..." or a local file)``; the tag's merge config is applied either way.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch.nn as nn

from rmeeto import models
from rmeeto._hubpath import HF_HUB_PREFIX, HubError, is_hub_path, parse_hub_path, resolve
from rmeeto.checkpoint import LoadResult, load_checkpoint
from rmeeto.merge import MergeConfig, apply_merge

__all__ = [
    "HF_HUB_PREFIX",
    "HubError",
    "PRETRAINED",
    "Pretrained",
    "get_pretrained",
    "is_hub_path",
    "list_pretrained",
    "load_pretrained",
    "parse_hub_path",
    "resolve",
    "create_model",
    "register_with_timm",
]

_OVERRIDE_ENV = "RMEETO_WEIGHTS_"


@dataclass(frozen=True)
class Pretrained:
    """One published weight file.

    model: the registered architecture it loads into.  tag: the part after the dot in ``model.tag``.  repo / filename / revision: where it lives on the hub (``revision`` None = main).
    merge: :class:`~rmeeto.merge.MergeConfig` arguments the weights were re-trained with (R-MeeTo rows);
    None = an unmerged model.  use_ema: take the file's ``model_ema`` entry.  top1: the published ImageNet-1k
    (or K400) top-1 of the file.  checked: the file name is confirmed by the source (False: assumed, see the
    module docstring for overriding it).
    """

    model: str
    tag: str
    repo: str
    filename: str
    revision: Optional[str] = None
    merge: Optional[dict[str, Any]] = None
    use_ema: bool = False
    top1: Optional[float] = None
    checked: bool = True

    @property
    def name(self) -> str:
        return f"{self.model}.{self.tag}"

    @property
    def hub_path(self) -> str:
        """The ``hf-hub:`` path of the file (after any ``RMEETO_WEIGHTS_<TAG>`` override)."""
        override = os.environ.get(_OVERRIDE_ENV + self.name.upper().replace(".", "__"))
        if override:
            return override
        rev = f"@{self.revision}" if self.revision else ""
        return f"{HF_HUB_PREFIX}{self.repo}/{self.filename}{rev}"

    def merge_config(self) -> Optional[MergeConfig]:
        return MergeConfig(**self.merge) if self.merge is not None else None


# R-MeeTo merge settings of the published re-trainings: r = 5 (Ti) / 11 (S, B) at every second layer, ordered,
# and the release's ``compare`` rule that leaves 76 tokens after the last merging layer of a 197-token model
_RMEETO_TI = dict(num_merged=5, interval=2, ordered=True, final_tokens=76)
_RMEETO_SB = dict(num_merged=11, interval=2, ordered=True, final_tokens=76)
_RMEETO_K400 = dict(num_merged=88, interval=2, ordered=True)  # video scripts: r = 88 on 8 x 196 tokens
_RMEETO = "Soptq/R-Meeto"
_RMEETO_FILE = "model_best.pth"  # what the R-MeeTo trainer names its best epoch; not checked against the repo

# The first row of a model is its default (``create_model(model, pretrained=True)``).
PRETRAINED: tuple[Pretrained, ...] = (
    # -------------------------------------------------------------------- official Vim (SPEC section 2)
    Pretrained("vim_tiny_patch16_224", "in1k", "hustvl/Vim-tiny-midclstok", "vim_t_midclstok_76p1acc.pth", top1=76.1),
    Pretrained("vim_small_patch16_224", "in1k", "hustvl/Vim-small-midclstok", "vim_s_midclstok_80p5acc.pth", top1=80.5),
    Pretrained("vim_base_patch16_224", "in1k", "hustvl/Vim-base-midclstok", "vim_b_midclstok_81p9acc.pth",
               use_ema=True, top1=81.9),
    # -------------------------------------------------------------------- official VideoMamba
    Pretrained("videomamba_tiny_patch16_224", "in1k", "OpenGVLab/VideoMamba", "videomamba_t16_in1k_res224.pth"),
    Pretrained("videomamba_small_patch16_224", "in1k", "OpenGVLab/VideoMamba", "videomamba_s16_in1k_res224.pth"),
    Pretrained("videomamba_base_patch16_224", "in1k", "OpenGVLab/VideoMamba", "videomamba_b16_in1k_res224.pth"),
    Pretrained("videomamba_tiny_patch16_224_f8", "k400", "OpenGVLab/VideoMamba", "videomamba_t16_k400_f8_res224.pth"),
    Pretrained("videomamba_small_patch16_224_f8", "k400", "OpenGVLab/VideoMamba", "videomamba_s16_k400_f8_res224.pth"),
    Pretrained("videomamba_middle_patch16_224_f8", "k400", "OpenGVLab/VideoMamba", "videomamba_m16_k400_f8_res224.pth"),
    # -------------------------------------------------------------------- R-MeeTo re-trained (merged) weights
    *(Pretrained(model, tag, _RMEETO, f"{folder}/{_RMEETO_FILE}", merge=merge, use_ema=use_ema, top1=top1,
                 checked=False)
      for model, tag, folder, merge, use_ema, top1 in (
          # model, tag, folder of the release, merge preset, use_ema, published top-1
          ("vim_tiny_patch16_224", "rmeeto_r5_in1k", "Vim-Ti_30epoch_75.3", _RMEETO_TI, False, 75.3),
          ("vim_small_patch16_224", "rmeeto_r11_in1k", "Vim-S_15epoch_80.0", _RMEETO_SB, False, 79.9),
          ("vim_base_patch16_224", "rmeeto_r11_in1k", "Vim-B_15epochs_81.3", _RMEETO_SB, True, 81.3),
          ("videomamba_tiny_patch16_224", "rmeeto_r5_in1k", "VideoMamba-Ti_30epoch_75.9", _RMEETO_TI, False, 75.9),
          ("videomamba_small_patch16_224", "rmeeto_r11_in1k", "VideoMamba-S_15epochs_80.1", _RMEETO_SB, False, 80.1),
          ("videomamba_base_patch16_224", "rmeeto_r11_in1k", "VideoMamba-B_15epochs_81.9", _RMEETO_SB, False, 81.9),
          ("videomamba_tiny_patch16_224_f8", "rmeeto_r88_k400", "K400_VideoMamba-Ti_30epochs_76.5", _RMEETO_K400,
           False, 76.5),
          ("videomamba_small_patch16_224_f8", "rmeeto_r88_k400", "K400_VideoMamba-S_15epochs_78.5", _RMEETO_K400,
           False, 78.5),
          ("videomamba_middle_patch16_224_f8", "rmeeto_r88_k400", "K400_VideoMamba-M_15epochs_78.9", _RMEETO_K400,
           False, 78.9),
      )),
)


def list_pretrained(pattern: str = "*") -> list[str]:
    """``model.tag`` names of the table matching a shell-style ``pattern``, in table order."""
    return [p.name for p in PRETRAINED if fnmatch.fnmatch(p.name, pattern)]


def get_pretrained(name: str) -> Pretrained:
    """The table row of ``model.tag``, or of a bare ``model`` (its default, first row). Splits at the first dot."""
    model, _, tag = name.partition(".")
    for row in PRETRAINED:
        if row.model == model and (row.tag == tag or not tag):
            return row
    known = [p.name for p in PRETRAINED if p.model == model]
    hint = f"; {model} has: {', '.join(known)}" if known else f"; no published weights for {model!r}"
    raise HubError(f"no pretrained weights named {name!r}{hint}")


# ----------------------------------------------------------------------------------------------- loading


def load_pretrained(
    model: nn.Module, name: str, checkpoint_path: Union[str, os.PathLike, None] = None
) -> LoadResult:
    """Load the published weights ``name`` (``model.tag`` or a bare model name) into ``model`` (strict,
    weights-only, see :func:`~rmeeto.checkpoint.load_checkpoint`) and, for an R-MeeTo tag, apply the merge config
    it was trained with. ``checkpoint_path`` (a local file or ``hf-hub:`` path) replaces the table's file."""
    row = get_pretrained(name)
    source = checkpoint_path if checkpoint_path is not None else row.hub_path
    result = load_checkpoint(model, resolve(source), use_ema=row.use_ema)
    config = row.merge_config()
    if config is not None:
        apply_merge(model, config)
    return result


# ----------------------------------------------------------------------------------------------- create_model


def create_model(name: str, pretrained: bool = False, checkpoint_path: Union[str, os.PathLike, None] = None,
                 **overrides) -> nn.Module:
    """``rmeeto.create_model``: :func:`rmeeto.models.create_model` plus published weights.

    ``name`` is a registered model or ``model.tag`` (a row of :data:`PRETRAINED`). ``pretrained=True`` loads that
    row's file from the hub (strict, weights-only) and, for an R-MeeTo tag, applies the merge config it was
    re-trained with, so the result is ready to evaluate; ``checkpoint_path`` (a local file or ``hf-hub:`` path)
    then replaces the table's file. Without ``pretrained`` a ``checkpoint_path`` is loaded as given."""
    base, _, tag = name.partition(".")
    if tag:
        get_pretrained(name)  # an unknown tag is an error even without pretrained=True
    if not pretrained:
        return models.create_model(base, checkpoint_path=checkpoint_path, **overrides)
    if not tag and base in models.list_models(backbone="vit"):  # DeiT: timm's own pretrained configs
        return models.create_model(base, pretrained=True, checkpoint_path=checkpoint_path, **overrides)
    model = models.create_model(base, **overrides)
    load_pretrained(model, name, checkpoint_path)
    return model


def register_with_timm() -> None:
    """Expose every registered Vim-family model to ``timm.create_model`` (``pretrained=True`` and ``model.tag``
    included). Silently skipped if timm is missing or incompatible. ``import rmeeto`` calls it when timm is
    imported (at once if it already is): see :mod:`rmeeto._lazy`."""
    try:
        from timm.models import _registry
        from timm.models import register_model as timm_register
    except Exception:
        return

    def make(name: str):
        def fn(pretrained: bool = False, **kwargs):
            tag = kwargs.pop("pretrained_cfg", None)  # timm passes the ".tag" of "model.tag" here
            for key in ("pretrained_cfg_overlay", "cache_dir", "features_only"):
                kwargs.pop(key, None)  # timm bookkeeping, not architecture
            checkpoint_path = kwargs.pop("checkpoint_path", None) or None
            full = f"{name}.{tag}" if isinstance(tag, str) and tag else name
            return create_model(full, pretrained=pretrained, checkpoint_path=checkpoint_path, **kwargs)

        fn.__name__ = name
        fn.__module__ = "rmeeto.models"
        fn.__doc__ = f"{models.get_config(name).description} (rmeeto)"
        return fn

    for name in models.list_models(backbone="vim"):  # timm registers its own DeiTs
        if name not in _registry._model_entrypoints:
            timm_register(make(name))

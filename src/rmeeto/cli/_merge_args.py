"""Merge flags shared by every command that builds a merging model (flops, eval, sweep, visualize, retrain).

    add_merge_arguments(parser)                    # adds an argparse group "token merging"
    config = merge_config_from_args(args, name)    # -> MergeConfig, or None for the plain (unmerged) model

``--preset paper`` starts from :meth:`MergeConfig.paper` (r = 5 for Ti, 11 for S/B, even layers, ordered, and
76 tokens after the last merge for 224px models); every flag given explicitly overrides that field. Without a
preset (``--preset none``, the default) the model is unmerged unless some merge flag is given, in which case the
flags fill a :class:`MergeConfig` whose other fields keep their defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Optional

from rmeeto.argtypes import parse_int_at_least, positive_int, seed_int, unit_float
from rmeeto.backbones import default_interval, is_vit_name, schedule_for
from rmeeto.merge import DISTANCES, METRICS, REDUCES, MergeConfig, warn_if_merging_nowhere
from rmeeto.models import get_config

__all__ = ["add_merge_arguments", "merge_config_from_args", "parse_num_merged", "MERGE_FLAG_DESTS"]

PRESETS = ("none", "paper")

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(MergeConfig)}

# Flags that do not carry their field's value as is: dest -> (field, flag value -> field value). Every other
# MergeConfig field has a flag of its own name (tests/test_cli_args.py checks that the parser defines them all).
_RENAMED_FLAGS = {
    "unordered": ("ordered", lambda unordered: not unordered),
    "prune": ("mode", lambda prune: "prune" if prune else "merge"),
}

# argparse dest -> MergeConfig field, for every flag whose default None means "not given"
MERGE_FLAG_DESTS = {
    **{f.name: f.name for f in dataclasses.fields(MergeConfig)
       if f.name not in {field for field, _ in _RENAMED_FLAGS.values()}},
    **{dest: field for dest, (field, _) in _RENAMED_FLAGS.items()},
}

_NO_FINAL = "none"  # parsed value of ``--final-tokens none``: explicitly switch the final-count rule off


def parse_num_merged(text: str):
    """``"11"`` -> 11; ``"5,5,11"`` -> (5, 5, 11) (one entry per merging layer)."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a non-negative integer or a comma-separated list of them (one per merging layer), got {text!r}"
        ) from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"token counts must be >= 0, got {text!r}")
    return values[0] if len(values) == 1 and "," not in text else tuple(values)


def _choose(text: str) -> int:
    """``1``/``max`` = best partner; ``k`` or the paper's ``kc`` spelling (``3c``) = k-th best."""
    t = text.strip().lower()
    if t == "max":
        return 1
    if t.endswith("c"):
        t = t[:-1]
    return parse_int_at_least(t, 1, text, "expected 'max', an integer k >= 1 or 'kc' (e.g. 3c)", "expected k >= 1")


def _final_tokens(text: str):
    if text.strip().lower() in (_NO_FINAL, "0"):
        return _NO_FINAL
    return parse_int_at_least(text, 2, text, "expected an integer >= 2 or 'none'",
                              "expected an integer >= 2 (class token + one patch), or 'none' / 0 for off")


def add_merge_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add the token-merging flags (as one argument group) to ``parser`` and return the group."""
    g = parser.add_argument_group(
        "token merging",
        "Start from --preset (default: none = unmerged) and override fields with the flags below.",
    )
    g.add_argument("--preset", choices=PRESETS, default="none",
                   help="'paper': the official R-MeeTo setting of the model (r=5 Ti, r=11 S/B, even layers, "
                        "ordered, 76 tokens after the last merge); 'none': no merging unless flags say so")
    g.add_argument("-r", "--num-merged", dest="num_merged", type=parse_num_merged, default=None, metavar="N",
                   help="tokens merged at each merging layer: one integer, or a comma-separated list with one "
                        "entry per merging layer")
    g.add_argument("--interval", type=positive_int, default=None, metavar="K",
                   help=f"merge every K-th layer (default {_DEFAULTS['interval']} for a Vim: layers 2, 4, ..., 22; "
                        "1 for a ViT/DeiT: every block, as ToMe)")
    g.add_argument("--odd", action="store_const", const=True, default=None,
                   help="merge at layers i with (i + 1) %% K == 0 (1, 3, ..., 23) instead of i %% K == 0")
    g.add_argument("--unordered", action="store_const", const=True, default=None,
                   help="official unordered layout (kept tokens by score, cls, destinations) instead of keeping "
                        "the original token order")
    g.add_argument("--prune", action="store_const", const=True, default=None,
                   help="drop the matched tokens instead of averaging them into their partners")
    g.add_argument("--metric", choices=METRICS, default=None,
                   help=f"similarity source: previous mixer output 'x' or its B, C or delta (default "
                        f"{_DEFAULTS['metric']})")
    g.add_argument("--distance", choices=DISTANCES, default=None, help=f"similarity (default {_DEFAULTS['distance']})")
    g.add_argument("--choose", type=_choose, default=None, metavar="K",
                   help="partner rank: 1/max = most similar (default), K or Kc = K-th most similar")
    g.add_argument("--reduce", choices=REDUCES, default=None,
                   help=f"how merged tokens combine (default {_DEFAULTS['reduce']}; sum = size-weighted mean)")
    g.add_argument("--final-tokens", dest="final_tokens", type=_final_tokens, default=None, metavar="N",
                   help="the last merging layer leaves exactly N tokens (the official 'compare' rule; the paper "
                        "preset uses 76 at 224px); 'none' (or 0, the release's spelling) switches it off")
    g.add_argument("--shuffle-rate", dest="shuffle_rate", type=unit_float, default=None, metavar="F",
                   help="at each merging layer, randomly permute this fraction of the non-class tokens before "
                        "matching (the paper's order ablation; default 0 = off)")
    g.add_argument("--shuffle-per-sample", dest="shuffle_per_sample", action="store_const", const=True,
                   default=None, help="draw one permutation per image instead of one per batch (the release's)")
    g.add_argument("--shuffle-in-eval", dest="shuffle_in_eval", action="store_const", const=True, default=None,
                   help="shuffle in evaluation too (the release does; needed for training-free shuffle numbers)")
    g.add_argument("--shuffle-seed", dest="shuffle_seed", type=seed_int, default=None, metavar="S",
                   help=f"seed of the shuffling generator (default {_DEFAULTS['shuffle_seed']})")
    return g


def merge_config_from_args(args: argparse.Namespace, model_name: Optional[str] = None) -> Optional[MergeConfig]:
    """Build the :class:`MergeConfig` the flags describe, or None for an unmerged model (``--preset none`` and no
    merge flag). ``model_name`` (a registered model) is needed by ``--preset paper`` and is used to check a
    per-layer ``-r`` list against the model's merging layers. Raises :class:`rmeeto.cli.CLIError` on bad input."""
    from rmeeto.cli import CLIError

    given = {}
    for dest, field in MERGE_FLAG_DESTS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if dest in _RENAMED_FLAGS:
            value = _RENAMED_FLAGS[dest][1](value)
        elif dest == "final_tokens" and value == _NO_FINAL:
            value = None
        given[field] = value

    preset = getattr(args, "preset", "none") or "none"
    try:
        if preset == "paper":
            if model_name is None:
                raise CLIError("--preset paper needs a registered model name")
            config = MergeConfig.paper(model_name, **given)
        elif preset == "none":
            if not given:
                return None
            if model_name is not None and "interval" not in given:
                given["interval"] = default_interval(model_name)  # a ViT merges in every block (ToMe)
            config = MergeConfig(**given)
        else:
            raise CLIError(f"--preset {preset!r} is not valid; choose from {', '.join(PRESETS)}")
        if model_name is not None:
            _check_against_model(config, model_name)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    return config


def _check_against_model(config: MergeConfig, model_name: str) -> None:
    """Raise ValueError if ``config`` does not fit the model (e.g. a per-layer list of the wrong length)."""
    schedule_for(model_name, config)
    if not is_vit_name(model_name):  # a ViT merges in every block its interval names, block 0 included
        warn_if_merging_nowhere(config, get_config(model_name).arch.depth)

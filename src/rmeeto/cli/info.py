"""``rmeeto info``: what a checkpoint holds and which registered model it fits, without building the model."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rmeeto.cli import CLIError

HELP = "describe a checkpoint (.pth / .safetensors): model it fits, tensors, EMA, epoch"
DESCRIPTION = """\
Describe a checkpoint without building a model: its top-level entries, the number of tensors and parameters
and their dtype, the architecture read off the tensor shapes (width, depth, patch size, input size, classes),
the registered model it fits, whether it carries EMA weights, and the epoch it was saved at.

The file is read weights-only: a checkpoint that holds pickled code is refused, never executed.

examples:
  rmeeto info pretrained/vim_t_midclstok_76p1acc.pth
  rmeeto info runs/digits/checkpoint.pth --json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a .pth or .safetensors file")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _size(num_bytes: int) -> str:
    size = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError


def format_info(info: dict[str, Any]) -> str:
    arch = info["arch"]
    lines = [("checkpoint", f"{info['path']} ({_size(info['size_bytes'])}, {info['format']})"),
             ("entries", ", ".join(info["top_level_keys"]))]
    dtype = info["dtype"] or "-"
    if len(info["dtypes"]) > 1:
        dtype = ", ".join(f"{k} x{v}" for k, v in info["dtypes"].items())
    prefix = f"; key prefix '{info['prefix']}' (stripped on load)" if info["prefix"] else ""
    lines.append(("weights", f"'{info['weights_key']}': {info['num_tensors']} tensors, "
                             f"{info['num_params']:,} parameters, {dtype}{prefix}"))
    if arch["embed_dim"] is not None:
        parts = [f"embed_dim {arch['embed_dim']}", f"depth {arch['depth']}", f"patch {arch['patch_size']}"]
        if info.get("backbone") == "vit":
            parts.insert(0, "ViT")
        if arch["img_size"] is not None:
            parts.append(f"input {arch['img_size']}x{arch['img_size']} ({arch['num_tokens']} tokens)")
        parts.append(f"{arch['num_classes']} classes")
        if arch["d_state"] is not None:
            parts.append(f"d_state {arch['d_state']}")
        lines.append(("architecture", ", ".join(parts)))
    if info["model"] is None:
        lines.append(("model", "no registered model has this architecture"))
    else:
        overrides = "".join(f", {k}={v}" for k, v in info["model_overrides"].items())
        with_ = f" with {overrides[2:]}" if overrides else ""
        lines.append(("model", f"{info['model']}{with_}"))
        if info.get("misfit"):
            lines.append(("does not load", f"{info['misfit']} (a damaged or edited file?)"))
        else:
            lines.append(("load with", f"create_model({info['model']!r}{overrides}, checkpoint_path=...)"))
    lines.append(("EMA weights", "yes ('model_ema'; load with use_ema=True)" if info["has_ema"] else "no"))
    lines.append(("epoch", "-" if info["epoch"] is None else str(info["epoch"])))
    if info["trained_as"]:
        lines.append(("trained as", f"{info['trained_as']} (args.model)"))
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in lines)


def run(args: argparse.Namespace) -> int:
    from rmeeto.checkpoint import CheckpointError
    from rmeeto.models import inspect_checkpoint

    try:
        info = inspect_checkpoint(args.checkpoint)
    except CheckpointError as exc:
        raise CLIError(str(exc)) from None
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0

"""``rmeeto flops``: GFLOPs of a model, unmerged vs merged, by the paper's formula and by a true count."""

from __future__ import annotations

import argparse
import json

from rmeeto.cli import CLIError
from rmeeto.cli._merge_args import add_merge_arguments, merge_config_from_args

HELP = "GFLOPs (paper formula and true count) of a model, unmerged vs merged"
DESCRIPTION = """\
Print the GFLOPs (multiply-adds / 1e9) of a registered model, unmerged and merged, two ways:

  paper  the official R-MeeTo formula the paper reports (one scan direction, requested tokens per layer,
         matching cost at every merging layer, final-token rule ignored)
  true   what rmeeto's forward computes (both scan directions, actual token counts incl. clamping and the
         final-token rule, matching and averaging of real merges only)

plus the reduction relative to the unmerged model and the token count each layer processes.
A video model (videomamba_*_f8) is counted per clip (all frames' tokens, e.g. 1569 for 8 x 224 px).

examples:
  rmeeto flops vim_small_patch16_224 --preset paper      # 5.077 -> 3.585 G (paper formula)
  rmeeto flops vim_tiny_patch16_224 --preset paper --final-tokens none
  rmeeto flops vim_small_patch16_224 -r 15 --odd --metric B
  rmeeto flops vim_base_patch16_224 --preset paper --json
  rmeeto flops videomamba_small_patch16_224_f8 --preset paper   # 40.43 -> 30.99 G, r=88
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="registered model name (see 'rmeeto models')")
    add_merge_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def _describe(config) -> str:
    d = config.to_dict()
    return " ".join(f"{k}={v}" for k, v in d.items())


def run(args: argparse.Namespace) -> int:
    from rmeeto.flops import flops_table
    from rmeeto.models import get_config

    try:
        get_config(args.model)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    config = merge_config_from_args(args, args.model)
    try:
        rows = flops_table(args.model, config)
    except ValueError as exc:
        raise CLIError(str(exc)) from None

    if args.json:
        out = {"model": args.model, "merge": config.to_dict() if config is not None else None, "rows": rows}
        print(json.dumps(out, indent=2))
        return 0

    print(f"{args.model}")
    print(f"merge: {_describe(config) if config is not None else 'none (add --preset paper or -r N to compare)'}")
    print()
    print(f"{'':10s} {'paper GFLOPs':>13s} {'true GFLOPs':>12s} {'final tokens':>13s}")
    for row in rows:
        print(f"{row['setting']:10s} {row['paper_gflops']:13.3f} {row['true_gflops']:12.3f} {row['final_tokens']:13d}")
    if len(rows) > 1:
        m = rows[1]
        print(f"{'reduction':10s} {m['paper_reduction']:12.1%} {m['true_reduction']:12.1%}")
        print("(paper formula: requested tokens per merging layer (clamped to (n - 1) // 2), no final-token rule)")
    print()
    for row in rows:
        print(f"tokens per layer ({row['setting']}): {' '.join(map(str, row['tokens_per_layer']))}")
    return 0

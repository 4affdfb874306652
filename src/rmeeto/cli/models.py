"""``rmeeto models``: the registered models, their exact parameter counts, token counts and input sizes."""

from __future__ import annotations

import argparse
import json
from typing import Any, Callable, NamedTuple

from rmeeto.cli import CLIError

HELP = "list the registered models (parameters, tokens, input size)"
DESCRIPTION = """\
List the registered models with their exact parameter count, the number of tokens the first layer sees
(patches + class token), the input size (channels x height x width; channels x frames x height x width for
video models), GFLOPs by the paper's formula unmerged
and with the paper's merge preset (GFLOPs_paper_merge; 'rmeeto flops' adds the true count) and a description. PATTERN selects
models by shell-style wildcard (a plain word matches as a substring).

examples:
  rmeeto models                  # all models
  rmeeto models small            # names containing 'small'
  rmeeto models 'vim_*_224'      # wildcard
  rmeeto models --json           # machine-readable: one object per model
"""


class Column(NamedTuple):
    """One column of the table and one key of the JSON output. ``value(model, config)`` computes it from the
    model (built on the meta device: shapes only, no memory) and its registry config; ``fmt`` renders it."""

    header: str
    value: Callable[[Any, Any], Any]
    fmt: Callable[[Any], str] = str
    align: str = "<"


# one line per column; the last one is left unpadded
COLUMNS: tuple[Column, ...] = (
    Column("name", lambda model, cfg: cfg.name),
    Column("params", lambda model, cfg: sum(p.numel() for p in model.parameters()), "{:,}".format, ">"),
    Column("tokens", lambda model, cfg: model.num_tokens, str, ">"),
    Column("input", lambda model, cfg: list(cfg.input_size), lambda v: "x".join(map(str, v)), ">"),
    Column("GFLOPs", lambda model, cfg: round(_paper_gflops(cfg.name, False), 3), "{:.3f}".format, ">"),
    Column("GFLOPs_paper_merge", lambda model, cfg: round(_paper_gflops(cfg.name, True), 3), "{:.3f}".format, ">"),
    Column("description", lambda model, cfg: cfg.description),
)


def _paper_gflops(name: str, merged: bool) -> float:
    """Paper-formula GFLOPs, unmerged or with the paper merge preset (see ``rmeeto flops`` for the true count)."""
    from rmeeto.flops import paper_flops
    from rmeeto.merge import MergeConfig

    return paper_flops(name, MergeConfig.paper(name) if merged else None)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", metavar="PATTERN", nargs="?", default="*",
                        help="shell-style name pattern, or a substring (default: all)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")


def model_rows(pattern: str = "*") -> list[dict[str, Any]]:
    """One dict per registered model matching ``pattern`` (keys: the column headers)."""
    from rmeeto.models import create_model, get_config, list_models

    if not any(ch in pattern for ch in "*?["):
        pattern = f"*{pattern}*"
    rows = []
    for name in list_models(pattern):
        model = create_model(name, device="meta")
        cfg = get_config(name)
        rows.append({col.header: col.value(model, cfg) for col in COLUMNS})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    cells = [[col.header for col in COLUMNS]] + [[col.fmt(row[col.header]) for col in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = []
    for line in cells:
        parts = [f"{text:{col.align}{width}}" for text, col, width in zip(line, COLUMNS, widths)]
        parts[-1] = line[-1]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from rmeeto.models import list_models

    rows = model_rows(args.pattern)
    if not rows:
        raise CLIError(f"no model matches {args.pattern!r}; available: {', '.join(list_models())}")
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0

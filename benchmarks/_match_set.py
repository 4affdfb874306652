"""``--set KEY=VALUE`` for the benchmarks that time the matching's settings: each item sets ``MATCH_CONFIG[KEY]`` of
:mod:`rmeeto.ops.triton.merge` to a Python literal (an unknown key is an error naming it)."""

from __future__ import annotations

import ast

from rmeeto.ops.triton import merge as mt


def add_set_argument(ap, help: str = "a MATCH_CONFIG entry (a Python literal); repeatable") -> None:
    """The repeatable ``--set KEY=VALUE`` option on argparse parser ``ap`` (read by :func:`set_match_config`)."""
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help)


def set_match_config(items, error) -> None:
    """Apply ``items`` (``"KEY=VALUE"`` strings) to MATCH_CONFIG; ``error(message)`` on a malformed item or an
    unknown key."""
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            error(f"--set: expected KEY=VALUE, got {item!r}")
        if key not in mt.MATCH_CONFIG:
            error(f"--set: MATCH_CONFIG has no entry {key!r}")
        try:
            mt.MATCH_CONFIG[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            error(f"--set: {value!r} is not a Python literal")

"""``--set KEY=VALUE`` for the benchmarks that time kernel settings: each item sets ``MATCH_CONFIG[KEY]`` of
:mod:`rmeeto.ops.triton.merge` to a Python literal, or, for a KEY ``module.NAME``, the constant NAME of
``rmeeto.ops.triton.module`` (an upper-case module global, such as ``inproj.WIDE_MAX_ROWS`` or
``outproj.TMA_MAX_ROWS``), or of a module named in full (``rmeeto.ops.proj.ALIGN_BC_TRAIN``). An unknown key is an
error naming it."""

from __future__ import annotations

import ast
import importlib
import sys

from rmeeto.ops.triton import merge as mt


def split_command(argv=None) -> tuple[list, list]:
    """(the tool's own arguments, the rmeeto command after ``--``: empty without one) of ``argv``
    (``sys.argv[1:]`` when None), for the tools that run a command with their settings applied."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        return argv, []
    split = argv.index("--")
    return argv[:split], argv[split + 1:]


def add_set_argument(ap, help: str = "a MATCH_CONFIG entry, or module.NAME: a constant of rmeeto.ops.triton.module "
                                     "(a Python literal); repeatable") -> None:
    """The repeatable ``--set KEY=VALUE`` option on argparse parser ``ap`` (read by :func:`set_match_config`)."""
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help)


def set_match_config(items, error) -> None:
    """Apply ``items`` (``"KEY=VALUE"`` strings) to MATCH_CONFIG; ``error(message)`` on a malformed item or an
    unknown key."""
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            error(f"--set: expected KEY=VALUE, got {item!r}")
        try:
            literal = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            error(f"--set: {value!r} is not a Python literal")
        module_name, dot, name = key.rpartition(".")
        if dot:  # a kernel module's constant (or, named in full, any rmeeto module's)
            full = module_name if module_name.startswith("rmeeto.") else f"rmeeto.ops.triton.{module_name}"
            try:
                module = importlib.import_module(full)
            except ImportError:
                error(f"--set: no module {full}")
            if not (name.isupper() and hasattr(module, name)):
                error(f"--set: {full} has no constant {name!r}")
            setattr(module, name, literal)
        elif key in mt.MATCH_CONFIG:
            mt.MATCH_CONFIG[key] = literal
        else:
            error(f"--set: MATCH_CONFIG has no entry {key!r}")

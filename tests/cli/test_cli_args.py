"""CLI flags that mirror config dataclasses: every field has a flag and every flag names a field."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from rmeeto.cli import build_parser
from rmeeto.cli._merge_args import MERGE_FLAG_DESTS, add_merge_arguments, merge_config_from_args
from rmeeto.merge import MergeConfig


def _group_dests(parser: argparse.ArgumentParser, title: str) -> set[str]:
    (group,) = [g for g in parser._action_groups if g.title == title]
    return {a.dest for a in group._group_actions}


def test_merge_flags_cover_merge_config_fields_one_to_one():
    parser = argparse.ArgumentParser()
    add_merge_arguments(parser)
    flags = _group_dests(parser, "token merging") - {"preset"}
    assert flags == set(MERGE_FLAG_DESTS), "a merge flag without a MERGE_FLAG_DESTS entry, or the reverse"
    assert set(MERGE_FLAG_DESTS.values()) == {f.name for f in dataclasses.fields(MergeConfig)}
    assert len(set(MERGE_FLAG_DESTS.values())) == len(MERGE_FLAG_DESTS)


def test_merge_flags_fill_the_fields_they_name():
    parser = argparse.ArgumentParser()
    add_merge_arguments(parser)
    args = parser.parse_args(["-r", "2,3", "--interval", "3", "--odd", "--unordered", "--prune", "--metric", "B",
                              "--distance", "l1", "--choose", "3c", "--reduce", "amax", "--final-tokens", "9"])
    assert merge_config_from_args(args) == MergeConfig(
        num_merged=(2, 3), interval=3, odd=True, ordered=False, mode="prune", metric="B", distance="l1", choose=3,
        reduce="amax", final_tokens=9,
    )
    assert merge_config_from_args(parser.parse_args([])) is None


def test_retrain_flags_cover_train_config_fields():
    from rmeeto.cli.retrain import TRAIN_FLAGS
    from rmeeto.train import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    retrain = subparsers.choices["retrain"]
    dests = {a.dest for a in retrain._actions}
    # model is its own flag, merge is built from the merge flags; the rest pass through TRAIN_FLAGS
    assert fields == set(TRAIN_FLAGS) | {"model", "merge"}
    assert set(TRAIN_FLAGS) <= dests, f"TRAIN_FLAGS without a flag: {set(TRAIN_FLAGS) - dests}"
    assert "model" in dests and set(MERGE_FLAG_DESTS) <= dests


def _help_examples():
    """Every 'rmeeto ...' example command of every command's --help text, continuation lines joined."""
    import importlib
    import shlex

    from rmeeto.cli import COMMANDS

    for name in COMMANDS:
        text = importlib.import_module(f"rmeeto.cli.{name.replace('-', '_')}").DESCRIPTION
        lines = text.split("examples:", 1)[1].splitlines() if "examples:" in text else []
        command = ""
        for line in lines:
            # a lone backslash at a source line's end is Python's line continuation: it glues two example lines
            assert "   " not in line.split("#", 1)[0].strip(), f"'rmeeto {name} --help': glued lines: {line.strip()}"
            command += line.split("#", 1)[0].strip() + " "
            if line.rstrip().endswith("\\"):
                command = command.replace("\\ ", "")
                continue
            words = shlex.split(command)
            command = ""
            if "rmeeto" in words and words[0] != "python" and not any("..." in w for w in words):  # "...same flags..."
                yield name, words[words.index("rmeeto") + 1:]


def test_every_help_example_parses():
    """The examples are what users copy: each must parse (a lost line continuation once glued two lines)."""
    from rmeeto.cli import build_parser

    parser = build_parser()
    seen = set()
    for name, words in _help_examples():
        try:
            parser.parse_args(words)
        except SystemExit:
            pytest.fail(f"rmeeto {name} --help example does not parse: rmeeto {' '.join(words)}")
        seen.add(words[0])
    assert seen >= {"bench", "eval", "sweep", "retrain", "visualize", "export", "ablate"}


def test_class_list_file_errors_are_one_line(tmp_path):
    from rmeeto.argtypes import class_list_file

    good = tmp_path / "good.txt"
    good.write_text("# comment\ncat\n\ndög\n", encoding="utf-8")
    assert class_list_file(str(good)) == ("cat", "dög")
    cases = {"latin1.txt": ("cat\nd\xf6g\n".encode("latin-1"), r"is not UTF-8 text \(byte 0xf6 at offset 5\)"),
             "empty.txt": (b"# nothing\n\n", "names no class"), "twice.txt": (b"a\nb\na\n", "repeats a")}
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            class_list_file(str(tmp_path / name))
    with pytest.raises(argparse.ArgumentTypeError, match="cannot read class list .*: No such file"):
        class_list_file(str(tmp_path / "missing.txt"))


def test_worker_counts_are_bounded_by_the_usable_cores(monkeypatch, capsys):
    import rmeeto.argtypes as argtypes
    from rmeeto.cli import main

    monkeypatch.setattr(argtypes, "usable_cores", lambda: 3)
    assert argtypes.worker_count("12") == 12 and argtypes.worker_count("0") == 0
    for text in ("13", "1000"):
        with pytest.raises(argparse.ArgumentTypeError, match=f"{text} data-loading processes for 3 usable CPU cores; "
                                                             "give at most 12"):
            argtypes.worker_count(text)
    with pytest.raises(SystemExit):  # refused while parsing: no process is started
        main(["eval", "vim_test_patch4_16", "--workers", "1000"])
    assert "argument --workers: 1000 data-loading processes" in capsys.readouterr().err

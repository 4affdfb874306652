"""CLI flags that mirror config dataclasses: every field has a flag and every flag names a field."""

from __future__ import annotations

import argparse
import dataclasses

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

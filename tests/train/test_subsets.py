"""Re-training on a data subset (issue 12): --data-fraction takes a deterministic, class-balanced sample of the
training split; validation stays whole unless --subset-val asks for the release's behaviour."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from rmeeto.cli import main
from rmeeto.train import TrainConfig
from rmeeto.train.data import build_data
from rmeeto.train.distributed import Ranks

MODEL = "vim_test_patch4_16"


def _build(**kw):
    cfg = TrainConfig(model=MODEL, data="digits", alpha=0.0, workers=0, progress=False, batch_size=8, **kw)
    return build_data(cfg, Ranks(), torch.device("cpu"))


def _labels(dataset):
    from rmeeto.data import dataset_labels

    return dataset_labels(dataset)


def test_fraction_is_balanced_deterministic_and_leaves_val_alone():
    full = _build()
    part = _build(data_fraction=0.25, data_seed=3)
    again = _build(data_fraction=0.25, data_seed=3)
    other = _build(data_fraction=0.25, data_seed=4)
    full_counts, part_counts = Counter(_labels(full.train_set)), Counter(_labels(part.train_set))
    assert set(part_counts) == set(full_counts)  # every class kept
    for c, n in full_counts.items():
        assert part_counts[c] == max(1, round(0.25 * n))
    assert part.train_set.indices == again.train_set.indices != other.train_set.indices
    assert len(part.val_set) == len(full.val_set)  # validation untouched by default
    assert part.steps_per_epoch < full.steps_per_epoch
    with_val = _build(data_fraction=0.25, data_seed=3, subset_val=True)
    assert len(with_val.val_set) < len(full.val_set)


def test_uniform_mode_and_bad_fraction():
    part = _build(data_fraction=0.1, data_subset="uniform")
    assert len(part.train_set) == round(0.1 * len(_build().train_set))
    with pytest.raises(ValueError, match="data_fraction must be in"):
        TrainConfig(model=MODEL, alpha=0.0, data_fraction=0.0)
    with pytest.raises(ValueError, match="data_subset='stratified' is not valid"):
        TrainConfig(model=MODEL, alpha=0.0, data_subset="stratified")


def test_cli_flags_reach_the_config(capsys):
    for argv, message in [(["--data-fraction", "0"], "expected a number in (0, 1]"),
                          (["--data-fraction", "1.5"], "expected a number in (0, 1]"),
                          (["--data-subset", "random"], "invalid choice")]:
        with pytest.raises(SystemExit) as info:
            main(["retrain", "--model", MODEL, "--from-scratch", "--alpha", "0", *argv])
        assert info.value.code == 2
        assert message in capsys.readouterr().err

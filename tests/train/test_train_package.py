"""The pieces of the rmeeto.train package: the typed result, the run state, cross-rank agreement, the file format.

The end-to-end behaviour of the loop (learning, bitwise resume, DDP, signals, bad input) is in test_train.py;
that every module imports on its own is checked for the whole package in tests/test_imports.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from rmeeto.train import TrainConfig, TrainResult, train
from rmeeto.train.distributed import Ranks, agree_on_step, gather_from_ranks, sum_over_ranks
from rmeeto.train.state import RunState, new_partial

MODEL = "vim_test_patch4_16"

# what last.pth holds: a file format, so checkpoints written by earlier versions stay resumable
LAST_KEYS = {"model", "optimizer", "lr_scheduler", "epoch", "step_in_epoch", "global_step", "best_top1",
             "best_epoch", "history", "partial", "rng", "config", "model_name", "merge_config"}
BEST_KEYS = {"model", "epoch", "top1", "config", "model_name", "merge_config"}


def test_one_process_agreement_is_its_own_verdict():
    ranks, cpu = Ranks(), torch.device("cpu")
    agreed = agree_on_step(torch.tensor(1.25), stop_requested=False, ranks=ranks, device=cpu)
    assert (agreed.loss, agreed.skip, agreed.stop, agreed.finite) == (1.25, False, False, True)
    agreed = agree_on_step(None, stop_requested=True, ranks=ranks, device=cpu)  # no readable image in the batch
    assert agreed.skip and agreed.stop
    assert not agree_on_step(torch.tensor(float("nan")), False, ranks, cpu).finite
    assert sum_over_ranks(3, ranks, cpu) == 3 and gather_from_ranks("x", ranks) == ["x"]


def test_finish_epoch_keeps_the_best_and_moves_to_the_next_epoch():
    state = RunState(epoch=0, step_in_epoch=7, partial={"loss_sum": 3.0, "loss_count": 2, "images": 9,
                                                       "seconds": 1.0})
    assert state.finish_epoch({"epoch": 0}, 50.0)
    assert (state.epoch, state.step_in_epoch, state.partial) == (1, 0, new_partial())
    assert not state.finish_epoch({"epoch": 1}, 40.0)  # worse: best stays at epoch 0
    assert not state.finish_epoch({"epoch": 2}, 50.0)  # a tie is not better
    assert state.finish_epoch({"epoch": 3}, 60.0)
    assert (state.best_epoch, state.best_top1, len(state.history)) == (3, 60.0, 4)


@pytest.mark.parametrize("mixup", [0.0, 0.8])
def test_train_batch_shape_is_the_shape_of_the_loaders_batches(mixup):
    """The CUDA graphs are captured for train_batch_shape before any batch exists: it must be what comes."""
    from rmeeto.train.data import build_data, train_batch_shape

    config = TrainConfig(model=MODEL, batch_size=6, workers=0, mixup=mixup, cutmix=0.0, alpha=0.0)
    images, _ = next(iter(build_data(config, Ranks(), torch.device("cpu")).train_loader))[:2]
    assert train_batch_shape(config) == tuple(images.shape) == (6, 3, 16, 16)


def test_only_the_expected_torch_warnings_are_quieted():
    import warnings

    from rmeeto.train.report import EXPECTED_TORCH_WARNINGS, expected_torch_warnings_quiet

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with expected_torch_warnings_quiet():
            for message in EXPECTED_TORCH_WARNINGS:
                warnings.warn(message + " (details)", UserWarning)
            warnings.warn("a checkpoint's head was re-initialised", UserWarning)
        warnings.warn(EXPECTED_TORCH_WARNINGS[0], UserWarning)  # outside: the caller's filters again
    assert [str(w.message) for w in seen] == ["a checkpoint's head was re-initialised", EXPECTED_TORCH_WARNINGS[0]]


def test_step_model_captures_the_teacher_for_full_batches_and_says_so():
    """On CPU the student is not graphed; a graphed teacher is captured for train_batch_shape, and only then is
    the capture logged."""
    from types import SimpleNamespace

    from rmeeto import create_model
    from rmeeto.train.setup import step_model

    config = TrainConfig(model=MODEL, batch_size=6, alpha=0.0)
    run = SimpleNamespace(config=config, device=torch.device("cpu"), ranks=Ranks(), amp_dtype=torch.float32)
    student = create_model(MODEL)
    shapes, lines = [], []
    teacher = SimpleNamespace(graphed=object(), capture=shapes.append)
    assert step_model(run, student, teacher, log=lines.append) is student
    assert shapes == [(6, 3, 16, 16)] and len(lines) == 1 and lines[0].startswith("CUDA graphs captured in")
    teacher.graphed = None
    step_model(run, student, teacher, log=lines.append)
    assert len(lines) == 1 and len(shapes) == 1  # an eager teacher: no capture, no line


def test_rng_kept_puts_the_random_stream_back():
    from rmeeto.train.graphs import rng_kept

    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    with rng_kept(torch.device("cpu")):
        torch.rand(100)  # what a capture's warm-up draws
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.slow
def test_train_returns_the_documented_result_and_files(tmp_path):
    cfg = TrainConfig(model=MODEL, epochs=2, batch_size=64, lr=8e-3, alpha=0.0, drop_path=0.0, workers=0,
                      progress=False, out=str(tmp_path))
    result = train(cfg)
    assert isinstance(result, TrainResult) and result.status == "finished" and result.signal is None
    assert [h["epoch"] for h in result.history] == [0, 1] and result.final is result.history[-1]
    best = max(result.history, key=lambda h: h["top1"])  # the first of equal scores wins
    assert (result.best_epoch, result.best_top1) == (best["epoch"], best["top1"])
    for h in result.history:  # the epoch's rate split at its first step: start-up first, then the steady rate
        assert 0 < h["first_step_s"] < h["seconds"] and h["steady_images_per_s"] > 0
        assert 0 < h["first_batch_s"] < h["first_step_s"]  # waiting for data: part of the first step
    assert result["history"] is result.history and result["final"] is result.final  # the old dict-style reads
    with pytest.raises(KeyError):
        result["no_such_field"]
    last = torch.load(result.last_path, weights_only=True)
    assert set(last) == LAST_KEYS and (last["epoch"], last["step_in_epoch"]) == (2, 0)
    stored = torch.load(result.best_path, weights_only=True)
    assert set(stored) == BEST_KEYS and stored["epoch"] == result.best_epoch
    assert all(torch.equal(v, result.model.state_dict()[k]) for k, v in last["model"].items())
    assert TrainConfig.from_dict(last["config"]) == result.config


def test_a_run_that_writes_nothing_has_no_paths():
    result = TrainResult(status="finished", signal=None, history=[], best_top1=None, best_epoch=None,
                         seconds=0.0, out=None, config=TrainConfig(model=MODEL, alpha=0), model=None, ema=None)
    assert result.final is None and result.last_path is None and result.best_path is None
    assert math.isclose(result["seconds"], 0.0)

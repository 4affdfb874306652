"""The timing core (rmeeto.timing) on CPU, and the library's evaluation loader (rmeeto.evaluate)."""

from __future__ import annotations

import time

import pytest
import torch

from rmeeto.checkpoint import CheckpointError, save_checkpoint
from rmeeto.evaluate import load_model_for_eval, stored_merge_config
from rmeeto.merge import MergeConfig
from rmeeto.models import create_model
from rmeeto.timing import BENCH, OFFICIAL, Protocol, measure

MODEL = "vim_test_patch4_16"
CPU = torch.device("cpu")


class Counting:
    """Records the input of every call; the first ``slow_calls`` calls sleep ``slow_s`` (a warm-up that the
    timing must not see)."""

    def __init__(self, slow_calls: int = 0, slow_s: float = 0.0):
        self.seen, self.slow_calls, self.slow_s = [], slow_calls, slow_s

    def __call__(self, x):
        self.seen.append(x)
        if len(self.seen) <= self.slow_calls:
            time.sleep(self.slow_s)


# ============================================================================================ timing core
def test_measure_calls_warmup_plus_repeats_and_times_only_the_repeats():
    fn = Counting(slow_calls=2, slow_s=0.2)
    timing = measure(fn, ["a", "b", "c"], batch_size=4, device=CPU, protocol=Protocol(warmup=2, repeats=5))
    assert len(fn.seen) == 7
    # inputs rotate, the repeats starting again from the first
    assert fn.seen == ["a", "b"] + ["a", "b", "c", "a", "b"]
    assert len(timing.times_ms) == 5 and timing.repeats == 5 and timing.warmup == 2
    assert timing.median_ms < 100  # the 200 ms warm-up calls are not in the timed repeats


def test_timing_fields_are_consistent():
    timing = measure(lambda x: time.sleep(0.002), [None], batch_size=8, device=CPU,
                     protocol=Protocol(warmup=0, repeats=5))
    assert timing.images_per_s == pytest.approx(8 * 1000 / timing.median_ms)
    assert timing.ms_per_image == pytest.approx(timing.median_ms / 8)
    assert timing.ms_per_image == pytest.approx(1000 / timing.images_per_s)
    assert min(timing.times_ms) <= timing.p10_ms <= timing.median_ms <= timing.p90_ms <= max(timing.times_ms)
    assert timing.median_ms >= 2.0  # each call slept 2 ms: the clock is in milliseconds
    assert timing.peak_mem_mb is None and timing.device == "cpu"


def test_protocol_presets_and_overrides():
    cuda = torch.device("cuda")
    assert OFFICIAL.counts(cuda) == (100, 30) and not OFFICIAL.per_repeat  # one aggregate event pair
    assert OFFICIAL.counts(CPU) == (1, 3)
    assert BENCH.per_repeat and BENCH.counts(CPU) == BENCH.counts(cuda)
    assert OFFICIAL.with_counts(repeats=4).counts(CPU) == (1, 4)
    assert OFFICIAL.with_counts(warmup=0, repeats=2).counts(cuda) == (0, 2)
    fn = Counting()
    measure(fn, [0], batch_size=1, device=CPU, protocol=OFFICIAL)
    assert len(fn.seen) == 1 + 3
    with pytest.raises(ValueError, match="repeats"):
        Protocol(warmup=1, repeats=0)
    with pytest.raises(ValueError, match="batch_size"):
        measure(fn, [0], batch_size=0, device=CPU)


# ============================================================================================ evaluation loader
def _retrain_checkpoint(path, merge: MergeConfig):
    """A checkpoint laid out as ``rmeeto retrain`` writes best.pth."""
    model = create_model(MODEL)
    return save_checkpoint({"model": model.state_dict(), "epoch": 0, "top1": 0.0, "config": {"model": MODEL},
                            "model_name": MODEL, "merge_config": merge.to_dict()}, path)


def test_load_model_for_eval_merges_as_the_checkpoint_was_retrained(tmp_path):
    stored = MergeConfig(num_merged=3, mode="prune")
    ckpt = str(_retrain_checkpoint(tmp_path / "best.pth", stored))
    assert stored_merge_config(ckpt) == stored
    assert load_model_for_eval(MODEL, ckpt).merge_config == stored  # "auto" is the default
    override = MergeConfig(num_merged=1)
    assert load_model_for_eval(MODEL, ckpt, merge_config=override).merge_config == override
    assert getattr(load_model_for_eval(MODEL, ckpt, merge_config=None), "merge_config", None) is None
    x = torch.randn(2, 3, 16, 16)
    # the stored config prunes 3 tokens at layer 2: not the same function as the unmerged model
    with torch.no_grad():
        assert not torch.allclose(load_model_for_eval(MODEL, ckpt)(x), load_model_for_eval(MODEL, ckpt, None)(x))


def test_stored_merge_config_of_unmerged_and_plain_checkpoints(tmp_path):
    noop = str(_retrain_checkpoint(tmp_path / "teacher.pth", MergeConfig()))
    plain = str(save_checkpoint(create_model(MODEL), tmp_path / "plain.pth"))
    assert stored_merge_config(noop) is None and stored_merge_config(plain) is None and stored_merge_config(None) is None
    assert getattr(load_model_for_eval(MODEL, plain), "merge_config", None) is None
    bad = save_checkpoint({"model": create_model(MODEL).state_dict(), "merge_config": {"mode": "melt"}},
                          tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="unusable merge_config"):
        load_model_for_eval(MODEL, str(bad))
    for entry in ("hello", [2, 2]):  # damaged, not "unmerged": evaluating it unmerged would pass for its score
        odd = save_checkpoint({"model": create_model(MODEL).state_dict(), "merge_config": entry},
                              tmp_path / f"{type(entry).__name__}.pth")
        with pytest.raises(CheckpointError, match=f"unusable merge_config \\(a {type(entry).__name__}, not a dict"):
            load_model_for_eval(MODEL, str(odd))
    with pytest.raises(ValueError, match="'auto', None or a MergeConfig"):
        load_model_for_eval(MODEL, plain, merge_config="paper")

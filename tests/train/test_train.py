"""The training loop (rmeeto.train) and 'rmeeto retrain': learning, distillation, fault tolerance, DDP, bad input.

Everything runs on CPU with the tiny ``vim_test_patch4_16`` model (16 px digits). Subprocess tests use one
thread per process so that timing-sensitive steps (kill mid-epoch) and results (bitwise resume) are stable.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rmeeto import MergeConfig, apply_merge, create_model
from rmeeto.train import DistillationLoss, NonFiniteLossError, TrainConfig, TrainError, train

from _train_common import MODEL, read_log as _log, subprocess_env as _env, write_image_tree

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def _retrain_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "rmeeto", "retrain", "--model", MODEL, "--out", str(out), "-j", "0",
            "--no-progress", "--device", "cpu", *extra]


def _metrics(record: dict) -> dict:
    return {k: record[k] for k in ("epoch", "train_loss", "top1", "top5", "val_loss", "lr")}


# ------------------------------------------------------------------------------------------------ learning
def test_a_few_steps_lower_the_loss():
    cfg = TrainConfig(model=MODEL, epochs=2, batch_size=64, lr=8e-3, min_lr=1e-4, alpha=0.0, drop_path=0.0,
                      smoothing=0.0, workers=0, progress=False)
    result = train(cfg)
    first, second = result["history"]
    assert first["train_loss"] < 2.3  # ln(10) = 2.303 is chance
    assert second["train_loss"] < first["train_loss"]
    assert second["top1"] > 30.0  # chance is 10 %


def test_distillation_term_is_zero_when_student_is_teacher():
    torch.manual_seed(0)
    teacher = create_model(MODEL).eval()
    student = copy.deepcopy(teacher).train()  # train mode: no dropout/drop path in this config, so same function
    images, targets = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    loss_fn = DistillationLoss(torch.nn.CrossEntropyLoss(), alpha=0.5)
    with torch.no_grad():
        t_logits = teacher(images)
    total, parts = loss_fn(student(images), targets, t_logits)
    assert parts["kd"].abs().item() < 1e-6
    assert torch.allclose(total, parts["cls"], atol=1e-6)
    # ... and positive once the student merges tokens
    apply_merge(student, MergeConfig(num_merged=3))
    _, parts = loss_fn(student(images), targets, t_logits)
    assert parts["kd"].item() > 1e-6


# ------------------------------------------------------------------------------------------------ resume
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    # drop path, shift augmentation and mixup all draw random numbers: the resumed run must draw the same ones
    flags = ["--from-scratch", "--alpha", "0", "--epochs", "2", "-b", "64", "--lr", "8e-3", "--drop-path", "0.1",
             "--mixup", "0.8", "--cutmix", "1.0", "--save-every-steps", "1"]
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(_retrain_cmd(ref, *flags), env=_env(), check=True, capture_output=True, timeout=300)

    proc = subprocess.Popen(_retrain_cmd(killed, *flags), env=_env(RMEETO_DEBUG_STEP_SLEEP="0.5"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (killed / "last.pth").exists():  # the first in-epoch checkpoint
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.1)
        time.sleep(2.0)  # a few more steps, so the kill lands mid-epoch between checkpoints
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    state = torch.load(killed / "last.pth", weights_only=True)
    assert state["epoch"] == 0 and 0 < state["step_in_epoch"]

    # the folder alone resumes: the model and every setting come from last.pth (runtime flags only here)
    bare = [sys.executable, "-m", "rmeeto", "retrain", "--out", str(killed), "-j", "0", "--no-progress", "--device",
            "cpu", "--resume", "auto"]
    done = subprocess.run(bare, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resumed from" in done.stderr
    assert [_metrics(r) for r in _log(killed)] == [_metrics(r) for r in _log(ref)]
    # the start-up split: measured where an epoch ran from its first step in one process, not for the epoch
    # resumed in its middle (its first step after the resume is not the epoch's start-up)
    resumed, fresh = _log(killed)
    assert resumed["first_step_s"] is None and resumed["steady_images_per_s"] is None
    assert resumed["first_batch_s"] is None
    assert all(r["first_step_s"] > 0 and r["steady_images_per_s"] > 0 for r in [fresh, *_log(ref)])
    assert all(0 < r["first_batch_s"] < r["first_step_s"] for r in [fresh, *_log(ref)])
    a = torch.load(ref / "last.pth", weights_only=True)["model"]
    b = torch.load(killed / "last.pth", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        _retrain_cmd(out, "--from-scratch", "--alpha", "0", "--epochs", "1", "-b", "32"),
        env=_env(RMEETO_DEBUG_STEP_SLEEP="0.3"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    # log.jsonl appears once everything is built, right before the first step (a fixed sleep was flaky on a
    # loaded machine: the signal could arrive before Python had installed any handler)
    deadline = time.monotonic() + 120
    while not (out / "log.jsonl").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the run never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    state = torch.load(out / "last.pth", weights_only=True)
    assert state["epoch"] == 0 and state["step_in_epoch"] > 0


# ------------------------------------------------------------------------------------------------ distributed
def test_two_gloo_processes_match_one_process(tmp_path):
    common = ["--from-scratch", "--alpha", "0", "--epochs", "1", "--lr", "8e-3", "--drop-path", "0"]
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(_retrain_cmd(one, *common, "-b", "64"), env=_env(), check=True, capture_output=True,
                   timeout=300)
    cmd = _retrain_cmd(two, *common, "-b", "32")
    cmd[1:3] = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "rmeeto"]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (a,), (b,) = _log(one), _log(two)
    # same global batches and augmentations; only the gradient all-reduce changes the float summation order
    assert abs(a["train_loss"] - b["train_loss"]) < 1e-3
    assert abs(a["top1"] - b["top1"]) <= 1.0
    assert abs(a["val_loss"] - b["val_loss"]) < 1e-2
    assert b["lr"] == pytest.approx(a["lr"])


# ------------------------------------------------------------------------------------------------ bad input
def _image_folder(root: Path, per_class: int = 6, corrupt: int = 2) -> Path:
    write_image_tree(root, torch.Generator().manual_seed(0), per_class, ".png")
    for i in range(corrupt):
        (root / "train" / "a" / f"broken{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    return root


def test_corrupt_images_are_skipped_and_counted(tmp_path):
    data = _image_folder(tmp_path / "data")
    cfg = TrainConfig(model=MODEL, data=str(data), epochs=1, batch_size=4, lr=1e-3, alpha=0.0, train_aug=False,
                      workers=0, progress=False, out=str(tmp_path / "out"))
    result = train(cfg)
    assert result["final"]["skipped_images"] == 2
    assert _log(tmp_path / "out")[0]["skipped_images"] == 2


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = TrainConfig(model=MODEL, epochs=1, batch_size=64, lr=1e-3, alpha=0.0, workers=0, progress=False,
                      out=str(out), save_every_steps=1)
    monkeypatch.setenv("RMEETO_DEBUG_NAN_AT_STEP", "3")
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at epoch 0 step 3 .*last.pth.* intact"):
        train(cfg)
    state = torch.load(out / "last.pth", weights_only=True)  # intact and readable
    assert state["global_step"] == 3  # written before the bad step, never after it
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (out / "best.pth").exists()


def test_exploding_lr_stops_without_writing_bad_weights(tmp_path, capsys):
    from rmeeto.cli import main

    out = tmp_path / "run"
    code = main(["retrain", "--model", MODEL, "--from-scratch", "--lr", "1e30", "--epochs", "1", "-j", "0",
                 "--no-progress", "--save-every-steps", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert "rmeeto retrain: error: non-finite" in err and "Traceback" not in err
    assert not (out / "last.pth").exists()  # the first update already broke the weights: nothing was saved
    assert not out.exists()  # the run made the folder and recorded nothing in it: no folder is left behind
    # in a folder the user made, the failed run's empty log does not block the next run
    out.mkdir()
    argv = ["retrain", "--model", MODEL, "--from-scratch", "--epochs", "1", "-j", "0", "--no-progress",
            "--out", str(out)]
    assert main([*argv[:4], "--lr", "1e30", *argv[4:]]) == 1
    assert sorted(p.name for p in out.iterdir()) == [".lock", "log.jsonl"] and not (out / "log.jsonl").stat().st_size
    capsys.readouterr()
    assert main(argv) == 0, capsys.readouterr().err
    assert (out / "last.pth").is_file()


def test_cli_rejects_bad_flags(capsys):
    from rmeeto.cli import main

    for argv, message in [
        (["--from-scratch", "--resume", "auto"], "--resume auto"),
        (["--from-scratch", "--alpha", "-1"], "--alpha must be >= 0"),
        (["--from-scratch", "--amp", "fp16", "--device", "cpu"], "fp16 needs CUDA"),
        (["--from-scratch", "--alpha", "0.5"], "no teacher"),
    ]:
        with pytest.raises(SystemExit) as info:
            main(["retrain", "--model", MODEL, *argv])
        assert info.value.code == 2
        assert message in capsys.readouterr().err


def test_cli_bad_data_and_mismatched_checkpoint_fail_in_one_line(tmp_path, capsys):
    from rmeeto.checkpoint import save_checkpoint
    from rmeeto.cli import main

    assert main(["retrain", "--model", MODEL, "--from-scratch", "--data", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not found" in err

    (tmp_path / "data" / "train" / "a").mkdir(parents=True)
    assert main(["retrain", "--model", MODEL, "--from-scratch", "--data", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no images" in err

    other = tmp_path / "digits_model.pth"
    save_checkpoint(create_model("vim_digits_patch4_32"), other)
    assert main(["retrain", "--model", MODEL, "--checkpoint", str(other), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ("does not match" in err or "shape" in err)
    assert not (tmp_path / "o" / "last.pth").exists()


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused(tmp_path, capsys):
    from rmeeto.cli import main

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"model": create_model(MODEL).state_dict(), "payload": _Evil(marker)}, evil)
    code = main(["retrain", "--model", MODEL, "--checkpoint", str(evil), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "refusing to load" in err
    assert not marker.exists()


def test_input_checkpoint_is_never_overwritten(tmp_path):
    from rmeeto.checkpoint import save_checkpoint

    ckpt = save_checkpoint(create_model(MODEL), tmp_path / "last.pth")
    cfg = TrainConfig(model=MODEL, checkpoint=str(ckpt), out=str(tmp_path), workers=0, progress=False)
    with pytest.raises(TrainError, match="overwrite the input checkpoint"):
        train(cfg)


def test_config_round_trip_and_validation():
    cfg = TrainConfig.paper("vim_base_patch16_224", checkpoint="x.pth")
    assert cfg.ema and cfg.epochs == 15 and cfg.merge.num_merged == 11 and not cfg.wd_exempt
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="amp='fp8' is not valid; choose from 'auto', 'bf16'"):
        TrainConfig(model=MODEL, amp="fp8", alpha=0)
    with pytest.raises(ValueError, match="unknown model"):
        TrainConfig(model="vim_huge", alpha=0)
    # what a damaged or hand-edited run config (a resume reads it back) could hold
    for bad, message in [(dict(lr=float("nan")), "lr must be a finite number >= 0, got nan"),
                         (dict(warmup_lr=float("inf")), "warmup_lr must be a finite number >= 0"),
                         (dict(clip_grad=float("nan")), "clip_grad must be a finite number > 0"),
                         (dict(seed=2**64), "seed must be an integer from 0 to 4294967295"),
                         (dict(seed=-1), "seed must be an integer from 0 to 4294967295"),
                         (dict(data_seed=1.5), "data_seed must be an integer")]:
        with pytest.raises(ValueError, match=message):
            TrainConfig(model=MODEL, alpha=0, **bad)
    with pytest.raises(ValueError, match="shuffle_seed must be an integer from 0 to 4294967295"):
        MergeConfig(num_merged=1, shuffle_seed=2**40)


def test_demo_findings_follow_the_numbers():
    from rmeeto.demo import findings

    def stages(teacher, merged, pruned, retrained):
        names = ("teacher", "merged (training-free)", "pruned (training-free)", "merged + re-trained")
        return {n: {"top1": v} for n, v in zip(names, (teacher, merged, pruned, retrained))}

    history = [{"top1": 0.0}, {"top1": 0.0}]
    assert [f["holds"] for f in findings(stages(90, 70, 60, 88), history)] == [True, True, True]
    assert [f["holds"] for f in findings(stages(90, 70, 75, 72), history)] == [True, False, False]
    no_loss = findings(stages(90, 91, 85, 91), history)
    assert not no_loss[0]["holds"] and "no loss to recover" in no_loss[2]["text"]

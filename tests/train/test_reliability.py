"""Failure behaviour (issue 15): run-folder safety, preemption, best/last consistency, class checks, unreadable
data, output errors, flag validation, the torch security floor and smaller defects.

Each test reproduces one defect on the code before its fix. Training runs use the tiny ``vim_test_patch4_16``
model on CPU with one thread.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rmeeto.train import TrainConfig, TrainError, train

from _train_common import MODEL, subprocess_env as _env

TRAIN_PKG = sys.modules["rmeeto.train"]  # the package (the name rmeeto.train may also be the function)

pytestmark = pytest.mark.usefixtures("one_thread")


def _retrain_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "rmeeto", "retrain", "--model", MODEL, "--out", str(out), "--no-progress",
            "--device", "cpu", *extra]


def _quick(out, **kw) -> TrainConfig:
    """One short epoch from scratch (the digits split: ~1400 training images, 11 steps of 128)."""
    settings = dict(model=MODEL, epochs=1, batch_size=128, lr=1e-3, alpha=0.0, workers=0, progress=False,
                    out=str(out) if out is not None else None)
    settings.update(kw)
    return TrainConfig(**settings)


# ------------------------------------------------------------------------------------------------ 1. run folder
def test_resume_needs_only_the_folder_and_names_the_flags_it_ignores(tmp_path, capsys):
    """`rmeeto retrain --out DIR --resume auto` alone rebuilds the run's settings from its last.pth (no --model,
    no --checkpoint); runtime flags given apply, other flags given with new values are named as ignored, and a
    folder with nothing to resume needs the flags of a fresh run."""
    from rmeeto.cli import CLIError, build_parser
    from rmeeto.cli.retrain import config_from_args

    out = tmp_path / "run"
    train(_quick(out, lr=2e-3, seed=7, workers=1))
    capsys.readouterr()

    def config(*argv):
        return config_from_args(build_parser().parse_args(["retrain", *argv]))

    got = config("--out", str(out), "--resume", "auto")
    assert (got.model, got.lr, got.seed, got.alpha, got.epochs) == (MODEL, 2e-3, 7, 0.0, 1)
    assert got.workers == TrainConfig.__dataclass_fields__["workers"].default != 1  # runtime: this call's
    assert capsys.readouterr().err == ""
    got = config("--out", str(out), "--resume", "auto", "--model", "vim_tiny_patch16_224", "--lr", "0.5",
                 "--checkpoint", str(out / "last.pth"), "--seed", "7", "-j", "0")
    assert (got.model, got.lr, got.checkpoint, got.workers) == (MODEL, 2e-3, None, 0)
    err = capsys.readouterr().err
    assert "ignoring new values of model, checkpoint, lr)" in err, err  # --seed 7 is no change
    with pytest.raises(CLIError, match=r"--model is required \(--out .*empty holds no last.pth"):
        config("--out", str(tmp_path / "empty"), "--resume", "auto")
    with pytest.raises(CLIError, match="not an rmeeto training checkpoint"):
        torch.save({"model": {}}, tmp_path / "weights.pth")
        config("--resume", str(tmp_path / "weights.pth"), "--out", str(tmp_path / "o"))
    # a checkpoint path resumes too, but only into a folder: a resumed run that wrote nothing would be lost
    with pytest.raises(CLIError, match=r"give --out \(its own folder, .*run, to continue it in place\)"):
        config("--resume", str(out / "last.pth"))
    assert config("--resume", str(out / "last.pth"), "--out", str(out)).lr == 2e-3


def test_a_used_run_folder_is_refused_without_resume_or_overwrite(tmp_path):
    out = tmp_path / "run"
    train(_quick(out))
    log_before = (out / "log.jsonl").read_text()
    last_before = (out / "last.pth").read_bytes()
    with pytest.raises(TrainError, match=r"already holds a run.*--resume auto.*--overwrite"):
        train(_quick(out))
    assert (out / "log.jsonl").read_text() == log_before  # nothing truncated
    assert (out / "last.pth").read_bytes() == last_before
    # starting afresh on purpose works, and continuing does too
    assert train(_quick(out), overwrite=True).status == "finished"
    assert train(_quick(out), resume="auto").status == "finished"


def test_a_second_run_on_a_locked_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "w") as held:  # another run holds the lock
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        with pytest.raises(TrainError, match=r"in use by another run \(pid 4242\)"):
            train(_quick(out))
    # the kernel drops a lock with its holder: no stale lock after the holder is gone
    assert train(_quick(out)).status == "finished"


def test_cli_refuses_a_used_folder_in_one_line(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.jsonl").write_text('{"epoch": 0}\n')
    done = subprocess.run(_retrain_cmd(out, "--from-scratch", "--alpha", "0", "-j", "0"), env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--resume auto" in done.stderr and "--overwrite" in done.stderr and "Traceback" not in done.stderr
    assert (out / "log.jsonl").read_text() == '{"epoch": 0}\n'


# ------------------------------------------------------------------------------------------------ 2. preemption
def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.slow
def test_sigterm_to_the_process_group_with_workers_saves_and_exits_143(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(_retrain_cmd(out, "--from-scratch", "--alpha", "0", "--epochs", "1", "-b", "32",
                                         "-j", "2"),
                            env=_env(RMEETO_DEBUG_STEP_SLEEP="0.3"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # its own process group, as under Slurm
    try:
        _wait_for(out / "log.jsonl", proc)
        time.sleep(1.0)  # loader workers up and a step or two done
        os.killpg(proc.pid, signal.SIGTERM)  # the main process AND its loader workers, as scancel does
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    state = torch.load(out / "last.pth", weights_only=True)
    assert state["epoch"] == 0 and state["step_in_epoch"] > 0


def test_a_doubled_sigint_from_a_forwarding_wrapper_counts_as_one():
    from rmeeto.train.state import SignalCatcher

    with SignalCatcher() as catcher:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # the same Ctrl-C, forwarded again by a wrapper
        assert catcher.signum == signal.SIGINT
    with SignalCatcher(repeat_window=0.0) as catcher:  # a deliberate second Ctrl-C still stops at once
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)


def test_loader_workers_ignore_stop_signals():
    from rmeeto.train.data import ignore_stop_signals

    calls = []
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        ignore_stop_signals(3, then=calls.append)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert calls == [3]  # an existing worker_init_fn still runs
    finally:
        for s, h in before.items():
            signal.signal(s, h)


# ------------------------------------------------------------------------------------------------ 4. best/last
def test_a_kill_between_the_last_and_best_saves_is_repaired_on_resume(tmp_path, monkeypatch):
    out = tmp_path / "run"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies after last.pth, before best.pth

    real = TRAIN_PKG.save_best
    monkeypatch.setattr(TRAIN_PKG, "save_best", killed)
    with pytest.raises(KeyboardInterrupt):
        train(_quick(out))
    assert (out / "last.pth").exists() and not (out / "best.pth").exists()
    monkeypatch.setattr(TRAIN_PKG, "save_best", real)

    result = train(_quick(out), resume="auto")
    assert result.status == "finished" and result.best_path is not None
    last = torch.load(out / "last.pth", weights_only=True)
    best = torch.load(out / "best.pth", weights_only=True)
    assert best["epoch"] == last["best_epoch"] == 0
    assert all(torch.equal(best["model"][k], last["model"][k]) for k in last["model"])


# ------------------------------------------------------------------------------------------------ 7. output
def test_out_that_is_a_file_or_below_a_file_fails_before_any_work(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(TrainError, match="is a file"):
        train(_quick(afile))
    with pytest.raises(TrainError, match="below the file"):
        train(_quick(afile / "run"))


def test_a_failed_save_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import rmeeto.checkpoint as ckpt_mod

    out = tmp_path / "run"
    real, calls = ckpt_mod.torch.save, []

    def full_after_the_first_save(obj, f, *a, **k):
        calls.append(1)
        if len(calls) == 1:  # last.pth at the end of epoch 0 is written; best.pth then finds the disk full
            return real(obj, f, *a, **k)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_mod.torch, "save", full_after_the_first_save)
    with pytest.raises(TrainError) as info:
        train(_quick(out))
    monkeypatch.setattr(ckpt_mod.torch, "save", real)
    msg = str(info.value)
    assert "disk full / not writable" in msg and str(out / "best.pth") in msg
    assert "previous checkpoint is intact" in msg and "\n" not in msg
    assert torch.load(out / "last.pth", weights_only=True)["epoch"] == 1
    assert not list(out.glob(".*.tmp"))  # the interrupted save's temp file is gone


def test_stale_temp_files_are_removed_when_a_run_starts(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    stale = out / ".last.pth.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    train(_quick(out))
    assert not stale.exists()


def test_bad_out_leaves_no_folder_behind(tmp_path):
    out = tmp_path / "new"
    with pytest.raises(TrainError):
        train(_quick(out, data=str(tmp_path / "missing")))
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ 8. flags
@pytest.mark.parametrize("flags", [
    ["--lr", "inf"], ["--warmup-epochs", "inf"], ["--alpha", "inf"], ["--alpha", "nan"], ["--clip-grad", "nan"],
    ["--clip-grad", "0"], ["--ema-decay", "1.5"], ["--min-lr", "nan"], ["--auto-augment", "bogus-policy"],
    pytest.param(["--device", "cuda"], marks=pytest.mark.skipif(torch.cuda.is_available(), reason="has a GPU")),
])
def test_every_numeric_and_choice_flag_is_checked_by_argparse(flags, capsys, tmp_path):
    from rmeeto.cli import main

    with pytest.raises(SystemExit) as info:
        main(["retrain", "--model", MODEL, "--from-scratch", "--alpha", "0", "--out", str(tmp_path / "r"), *flags])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("usage:") or "error:" in err[-1]
    assert flags[0] in err[-1] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------------------ 3. classes
def _folders(root: Path, layout: dict, per_class: int = 2, corrupt: int = 0) -> Path:
    from PIL import Image

    for split, classes in layout.items():
        for label in classes:
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (16, 16), (i * 40, 80, 120)).save(folder / f"{i}.png")
            for i in range(corrupt):
                (folder / f"broken{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    return root


def test_val_labels_use_the_training_class_numbering(tmp_path):
    from rmeeto.data import build_dataset

    root = _folders(tmp_path / "d", {"train": ["a", "b", "c"], "val": ["b", "c"]})
    train_set = build_dataset(root, "train", img_size=16)
    val = build_dataset(root, "val", img_size=16, classes=train_set.classes)
    assert sorted(set(val.targets)) == [1, 2]  # b and c keep their training labels (were 0 and 1)


def test_the_run_stores_its_class_list_and_eval_numbers_another_folder_by_it(tmp_path):
    """The folder's class names go into the checkpoints; `rmeeto eval` (and sweep) of a folder that lacks a
    class numbers its labels by the stored list, not by its own sorted folders (which would shift b, c to 0, 1
    and score a model against the wrong labels)."""
    from rmeeto.checkpoint import read_checkpoint
    from rmeeto.evaluate import build_eval_dataset, stored_classes

    root = _folders(tmp_path / "d", {"train": ["a", "b", "c"], "val": ["a", "b", "c"]}, per_class=4)
    out = tmp_path / "out"
    train(_quick(out, data=str(root), batch_size=2, train_aug=False))
    for name in ("last.pth", "best.pth"):
        assert list(read_checkpoint(out / name)["config"]["classes"]) == ["a", "b", "c"]
    assert stored_classes(out / "best.pth") == ["a", "b", "c"]
    other = _folders(tmp_path / "e", {"val": ["b", "c"]})
    dataset, classes = build_eval_dataset(str(other), MODEL, classes=stored_classes(out / "best.pth"))
    assert classes == ["a", "b", "c"] and sorted(set(dataset.targets)) == [1, 2]
    # resuming without --classes is no change of settings (no "ignoring new values" message)
    cfg = TrainConfig.from_dict(read_checkpoint(out / "last.pth")["config"])
    from rmeeto.train.state import resumed_config

    said = []
    resumed_config(_quick(out, data=str(root), batch_size=2, train_aug=False), {"config": cfg.to_dict()},
                   out / "last.pth", said.append)
    assert not any("classes" in line for line in said)


def test_a_val_class_unknown_to_train_is_an_error_naming_it(tmp_path):
    root = _folders(tmp_path / "d", {"train": ["a", "b"], "val": ["a", "zebra"]}, per_class=4)
    with pytest.raises(TrainError, match="zebra"):
        train(_quick(None, data=str(root), batch_size=2, train_aug=False))


def test_more_data_classes_than_the_head_is_an_error_before_any_work(tmp_path):
    names = [f"c{i:02d}" for i in range(11)]  # the test model's head has 10
    root = _folders(tmp_path / "d", {"train": names, "val": names}, per_class=1)
    with pytest.raises(TrainError, match="11 classes.*head has 10"):
        train(_quick(tmp_path / "out", data=str(root), batch_size=2, train_aug=False))
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ 5. teacher head
def test_weights_holding_nan_or_inf_are_named_before_training(tmp_path):
    from rmeeto import create_model
    from rmeeto.checkpoint import save_checkpoint

    good = save_checkpoint(create_model(MODEL), tmp_path / "good.pth")
    state = create_model(MODEL).state_dict()
    state["head.weight"][0, 0] = float("inf")
    bad = save_checkpoint(state, tmp_path / "bad.pth")
    with pytest.raises(TrainError, match=r"teacher .*bad\.pth: its weights hold NaN or inf"):
        train(_quick(None, checkpoint=str(good), teacher=str(bad), alpha=0.5))
    with pytest.raises(TrainError, match=r"--checkpoint .*bad\.pth: its weights hold NaN or inf"):
        train(_quick(None, checkpoint=str(bad), alpha=0.0))


def test_a_teacher_whose_head_does_not_fit_is_refused(tmp_path):
    from rmeeto import create_model
    from rmeeto.checkpoint import save_checkpoint

    ckpt = save_checkpoint(create_model(MODEL, num_classes=5), tmp_path / "five.pth")
    with pytest.raises(TrainError, match=r"teacher .*five\.pth: its 5-class classifier does not fit the 10-class "
                                         r"model being trained; if the data has 5 classes, give --num-classes 5"):
        train(_quick(None, checkpoint=str(ckpt), alpha=0.5))
    fits = save_checkpoint(create_model(MODEL), tmp_path / "ten.pth")  # a separate teacher that fits is fine
    result = train(_quick(None, checkpoint=str(ckpt), teacher=str(fits), alpha=0.5))
    assert result.status == "finished"


# ------------------------------------------------------------------------------------------------ 6. unreadable
def test_a_dataset_of_unreadable_images_is_an_error_not_a_success(tmp_path):
    root = _folders(tmp_path / "d", {"train": ["a", "b"], "val": ["a", "b"]}, per_class=0, corrupt=4)
    for f in (root / "val").rglob("broken*.png"):  # val readable: only training data is broken
        from PIL import Image
        Image.new("RGB", (16, 16)).save(f)
    with pytest.raises(TrainError, match=r"no readable training image.*8 file\(s\) skipped"):
        train(_quick(tmp_path / "out", data=str(root), batch_size=2, train_aug=False))
    assert not (tmp_path / "out" / "best.pth").exists()


def test_more_unreadable_images_than_the_limit_is_an_error(tmp_path):
    root = _folders(tmp_path / "d", {"train": ["a", "b"], "val": ["a", "b"]}, per_class=4, corrupt=1)
    for f in (root / "val").rglob("broken*.png"):
        f.unlink()
    cfg = _quick(None, data=str(root), batch_size=2, train_aug=False, max_bad_fraction=0.1)
    with pytest.raises(TrainError, match=r"2 of 10 training images are unreadable.*--max-bad-fraction 0.1"):
        train(cfg)
    result = train(_quick(None, data=str(root), batch_size=2, train_aug=False, max_bad_fraction=0.25))
    assert result.final["skipped_images"] == 2  # every skipped file counted, also in all-unreadable batches


def test_unreadable_validation_files_do_not_count_against_the_training_limit(tmp_path):
    """--max-bad-fraction bounds the training files; the validation split's are counted apart, and a split with
    no readable image at all stops the run rather than scoring 0 %."""
    root = _folders(tmp_path / "d", {"train": ["a", "b"], "val": ["a", "b"]}, per_class=4)
    for label in ("a", "b"):
        for i in range(3):
            (root / "val" / label / f"broken{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    result = train(_quick(None, data=str(root), batch_size=2, train_aug=False, max_bad_fraction=0.1))
    assert result.final["skipped_images"] == 0 and result.final["skipped_val_images"] == 6
    for f in (root / "val").rglob("[0-9].png"):
        f.unlink()
    with pytest.raises(TrainError, match=r"epoch 0: no readable validation image in .*6 file\(s\) skipped"):
        train(_quick(None, data=str(root), batch_size=2, train_aug=False))


# ------------------------------------------------------------------------------------------------ 9. torch floor
def test_pth_files_are_refused_on_a_torch_too_old_to_load_them_safely(tmp_path, monkeypatch):
    import rmeeto.checkpoint as ckpt_mod
    from rmeeto.checkpoint import CheckpointError, read_checkpoint, save_checkpoint

    path = save_checkpoint({"w": torch.zeros(2)}, tmp_path / "a.pth")
    assert torch.equal(read_checkpoint(path)["model"]["w"], torch.zeros(2))
    monkeypatch.setattr(ckpt_mod, "_torch_version", lambda: (2, 5))
    with pytest.raises(CheckpointError, match=r"PyTorch .* cannot load untrusted .pth files safely.*2\.10"):
        read_checkpoint(path)


def test_pyproject_requires_a_safe_torch():
    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '"torch>=2.10"' in text


# ------------------------------------------------------------------------------------------------ 10. smaller
def _cli(capsys, *argv) -> tuple[int, str, str]:
    from rmeeto.cli import main

    rc = main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_eval_of_nan_weights_reports_non_finite_outputs_not_an_accuracy(tmp_path, capsys):
    from rmeeto import create_model
    from rmeeto.checkpoint import save_checkpoint

    model = create_model(MODEL)
    with torch.no_grad():
        model.head.weight.fill_(float("nan"))
    ckpt = save_checkpoint(model, tmp_path / "nan.pth")
    rc, out, err = _cli(capsys, "eval", MODEL, "--checkpoint", str(ckpt), "--limit", "8", "--device", "cpu",
                        "--workers", "0", "--no-progress", "--json", str(tmp_path / "r.json"))
    assert rc != 0
    assert "top-1" not in out and not (tmp_path / "r.json").exists()
    assert len(err.strip().splitlines()) == 1 and "not finite" in err


def test_flops_clamps_an_absurd_merge_count_as_the_forward_does(capsys):
    from rmeeto.flops import flops_table, paper_flops
    from rmeeto.merge import MergeConfig

    rows = flops_table(MODEL, MergeConfig(num_merged=1000))
    assert rows[1]["paper_gflops"] > 0 and rows[1]["true_gflops"] > 0
    # (L - 1) // 2 per merging layer, exactly what the schedule (and the forward) removes
    clamped = paper_flops(MODEL, MergeConfig(num_merged=1000), clamp=True)
    assert clamped == paper_flops(MODEL, MergeConfig(num_merged=8)) == rows[1]["paper_gflops"]
    rc, out, _ = _cli(capsys, "flops", MODEL, "-r", "1000")
    assert rc == 0 and "-" not in "".join(line.split()[1] for line in out.splitlines() if line.startswith("r="))


def test_a_merge_that_merges_at_no_layer_warns(capsys):
    from rmeeto import create_model
    from rmeeto.merge import MergeConfig, apply_merge

    with pytest.warns(UserWarning, match=r"--interval 100.*no layer.*4 layers"):
        apply_merge(create_model(MODEL), MergeConfig(num_merged=2, interval=100))
    with pytest.warns(UserWarning, match="no layer"):
        rc, _, _ = _cli(capsys, "flops", MODEL, "-r", "2", "--interval", "100")
    assert rc == 0


def test_a_head_of_the_wrong_width_names_the_real_mismatch(tmp_path):
    from rmeeto.models.vim import filter_state_dict
    from rmeeto import create_model

    model = create_model(MODEL)
    sd = dict(model.state_dict())
    sd["head.weight"] = torch.zeros(10, sd["head.weight"].shape[1] + 8)
    notes = " ".join(filter_state_dict(sd, model).notes)
    assert "10 classes, model has 10" not in notes
    assert f"{sd['head.weight'].shape[1]}" in notes and "width" in notes


def test_a_pos_embed_with_a_leading_dimension_of_two_is_one_line(tmp_path):
    from rmeeto import create_model
    from rmeeto.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    model = create_model(MODEL)
    sd = dict(model.state_dict())
    pos = sd["pos_embed"]
    sd["pos_embed"] = torch.zeros(2, 26, pos.shape[-1])  # batch of two, 25 patches: would be resized
    path = save_checkpoint({"model": sd}, tmp_path / "pos.pth")
    with pytest.raises(CheckpointError, match=r"pos_embed .*\(2, 26,"):
        load_checkpoint(create_model(MODEL), path)


@pytest.mark.parametrize("meta", ["[1, 2]", '"text"', "{not json", '{"epoch": "x"}', "x" * 5_000_000])
def test_crafted_safetensors_metadata_is_a_one_line_error_or_ignored(tmp_path, meta):
    from safetensors.torch import save_file

    from rmeeto import create_model
    from rmeeto.checkpoint import CheckpointError, load_checkpoint, read_checkpoint

    path = tmp_path / "m.safetensors"
    save_file(dict(create_model(MODEL).state_dict()), str(path), metadata={"format": "pt", "rmeeto": meta})
    try:
        ckpt = read_checkpoint(path)
    except CheckpointError as exc:
        assert "\n" not in str(exc) and "metadata" in str(exc)
        return
    assert isinstance(ckpt["model"], dict)
    load_checkpoint(create_model(MODEL), path)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A one-epoch run folder (last.pth, best.pth, log.jsonl)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    torch.set_num_threads(1)
    train(_quick(out))
    return out


@pytest.mark.parametrize("edit", [
    lambda c: c.pop("best_epoch"),
    lambda c: c.update(epoch="three"),
    lambda c: c.update(optimizer=[1, 2]),
    lambda c: c.update(best_top1=None),
    lambda c: c.update(config={"model": MODEL, "no_such_field": 1}),
    lambda c: c.update(history={"a": 1}),
    lambda c: c.update(partial={"loss_sum": "x"}),
    lambda c: c.pop("lr_scheduler"),
])
def test_a_hand_edited_last_pth_is_a_one_line_train_error(tmp_path, edit, finished_run):
    import shutil

    from rmeeto.checkpoint import read_checkpoint, save_checkpoint

    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    ckpt = read_checkpoint(out / "last.pth")
    edit(ckpt)
    save_checkpoint(ckpt, out / "last.pth")
    with pytest.raises(TrainError) as info:
        train(_quick(out, epochs=2), resume="auto")
    assert "\n" not in str(info.value) and "last.pth" in str(info.value)


def test_a_decompression_bomb_png_is_skipped_with_a_warning(tmp_path, caplog):
    from PIL import Image

    from rmeeto.data import MAX_IMAGE_PIXELS, ImageFolderDataset, SkippedSample
    from rmeeto.gpu_data import EncodedImageFolder

    (tmp_path / "a").mkdir()
    side = int(MAX_IMAGE_PIXELS ** 0.5) + 16  # just over the limit, below PIL's own bomb limits
    Image.new("1", (side, side)).save(tmp_path / "a" / "bomb.png")
    assert (tmp_path / "a" / "bomb.png").stat().st_size < 2_000_000
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "ok.png")
    for ds in (ImageFolderDataset(tmp_path), EncodedImageFolder(tmp_path)):
        items = [ds[i] for i in range(len(ds))]
        assert isinstance(items[0], SkippedSample) and "pixels" in items[0].reason
        assert not isinstance(items[1], SkippedSample)
    assert "bomb.png" in caplog.text


def test_16_bit_pngs_are_scaled_to_8_bit_not_clipped_white(tmp_path):
    import numpy as np
    from PIL import Image

    from rmeeto.data import ImageFolderDataset
    from rmeeto.gpu_data import EncodedImageFolder

    (tmp_path / "a").mkdir()
    grey16 = np.full((8, 8), 32768, dtype=np.uint16)  # mid-grey in 16 bits
    Image.fromarray(grey16).save(tmp_path / "a" / "g16.png")
    img, _ = ImageFolderDataset(tmp_path)[0]
    assert img.mode == "RGB" and set(np.asarray(img).ravel().tolist()) == {128}
    sample = EncodedImageFolder(tmp_path)[0]
    assert set(sample.data.ravel().tolist()) == {128}


def test_a_symlink_loop_does_not_duplicate_a_class(tmp_path):
    from PIL import Image

    from rmeeto.data import ImageFolderDataset

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / name / "x.png")
    (tmp_path / "a" / "loop").symlink_to(tmp_path / "a")  # a folder that contains itself
    (tmp_path / "a" / "other").symlink_to(tmp_path / "b")  # b's images would be labelled a too
    ds = ImageFolderDataset(tmp_path)
    assert sorted(ds.targets) == [0, 1]


def test_a_class_folder_linking_to_the_dataset_itself_is_an_error(tmp_path):
    from PIL import Image

    from rmeeto.data import DataError, ImageFolderDataset

    (tmp_path / "a").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "x.png")
    (tmp_path / "everything").symlink_to(tmp_path)
    with pytest.raises(DataError, match="everything.*contains the dataset"):
        ImageFolderDataset(tmp_path)


# ------------------------------------------------------------------------------------------------ 7. eval --json
_EVAL = ["eval", MODEL, "--limit", "8", "--device", "cpu", "--workers", "0", "--no-progress"]


def test_eval_json_below_a_file_or_unwritable_fails_before_any_work(tmp_path, capsys, monkeypatch):
    import rmeeto.evaluate as ev

    afile = tmp_path / "afile"
    afile.write_text("x")
    monkeypatch.setattr(ev, "evaluate", lambda *a, **k: pytest.fail("evaluated before checking --json"))
    for target, why in [(afile / "r.json", "below the file"), (tmp_path, "is a folder")]:
        rc, out, err = _cli(capsys, *_EVAL, "--json", str(target))
        assert rc == 2 and why in err and len(err.strip().splitlines()) == 1 and "top-1" not in out

    ro = tmp_path / "ro"
    ro.mkdir()
    real_open = os.open

    def read_only(path, flags, *a, **k):  # root ignores permission bits: refuse creation in ro/ by hand
        if str(path).startswith(str(ro)) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", read_only)
    rc, out, err = _cli(capsys, *_EVAL, "--json", str(ro / "r.json"))
    assert rc == 2 and "not writable" in err and "top-1" not in out
    assert list(ro.iterdir()) == []


def test_eval_json_is_written_atomically(tmp_path, capsys, monkeypatch):
    import rmeeto._files as files

    target = tmp_path / "r.json"
    target.write_text('{"previous": true}\n')
    real_fsync = files.os.fsync

    def full_disk(fd):  # with delayed allocation a full disk surfaces when the written bytes are flushed
        if os.fstat(fd).st_size and b'"top1"' in os.pread(fd, 1 << 16, 0):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", full_disk)
    rc, _, err = _cli(capsys, *_EVAL, "--json", str(target))
    assert rc == 2 and "disk full" in err and len(err.strip().splitlines()) == 1
    assert target.read_text() == '{"previous": true}\n'  # not truncated
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temp file left
    monkeypatch.setattr(files.os, "fsync", real_fsync)
    rc, _, _ = _cli(capsys, *_EVAL, "--json", str(target))
    assert rc == 0 and json.loads(target.read_text())["n"] == 8


# ------------------------------------------------------------------------------------------------ 3. class list
def test_an_explicit_class_list_numbers_every_split(tmp_path):
    from rmeeto.train.data import _datasets

    root = _folders(tmp_path / "d", {"train": ["a", "b"], "val": ["b"]})
    train_set, val = _datasets(_quick(None, data=str(root), classes=("b", "a", "c"), train_aug=False))
    assert train_set.classes == val.classes == ["b", "a", "c"]
    assert sorted(set(train_set.targets)) == [0, 1] and set(val.targets) == {0}  # b is 0 in both splits
    with pytest.raises(TrainError, match="not among the 1 training classes: b"):
        _datasets(_quick(None, data=str(root), classes=("a",), train_aug=False))


def test_retrain_reads_a_class_file_one_name_per_line(tmp_path, capsys):
    from rmeeto.cli import build_parser
    from rmeeto.cli.retrain import config_from_args

    names = tmp_path / "classes.txt"
    names.write_text("zebra\n  ant \n\n# a comment\ncat\n")
    argv = ["retrain", "--model", MODEL, "--from-scratch", "--classes", str(names), "--num-classes", "12"]
    config = config_from_args(build_parser().parse_args(argv))
    assert config.classes == ("zebra", "ant", "cat") and config.num_classes == 12
    names.write_text("a\nb\na\n")
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert "repeats a" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv[:-3] + [str(tmp_path / "missing.txt")])
    assert "missing.txt" in capsys.readouterr().err


def test_num_classes_builds_a_new_head_for_more_data_classes(tmp_path):
    from rmeeto import create_model
    from rmeeto.checkpoint import save_checkpoint

    names = [f"c{i:02d}" for i in range(11)]  # the test model's head has 10
    root = _folders(tmp_path / "d", {"train": names, "val": names}, per_class=1)
    ckpt = save_checkpoint(create_model(MODEL), tmp_path / "ten.pth")
    with pytest.raises(TrainError, match="--num-classes"):
        train(_quick(None, data=str(root), batch_size=2, train_aug=False, checkpoint=str(ckpt)))
    result = train(_quick(None, data=str(root), batch_size=2, train_aug=False, checkpoint=str(ckpt),
                          num_classes=11))
    assert result.status == "finished" and result.model.head.out_features == 11
    with pytest.raises(ValueError, match="num_classes"):
        _quick(None, num_classes=0)


# ------------------------------------------------------------------------------------------------ 8. eval/sweep/bench
_NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="has a GPU")


@pytest.mark.parametrize("argv", [
    ["eval", MODEL, "--limit", "0"], ["eval", MODEL, "--batch-size", "0"], ["eval", MODEL, "--workers", "-1"],
    ["eval", MODEL, "--device", "tpu"], pytest.param(["eval", MODEL, "--device", "cuda"], marks=_NO_GPU),
    ["sweep", MODEL, "-r", "1", "--batch-size", "-3"], ["sweep", MODEL, "-r", "1", "--device", "tpu"],
    ["sweep", MODEL, "-r", "1", "--limit", "x"],
    ["bench", MODEL, "--batch-size", "0"], ["bench", MODEL, "--img-size", "-16"], ["bench", MODEL, "--warmup", "-1"],
    ["bench", MODEL, "--repeats", "0"], ["bench", MODEL, "--train-repeats", "0"],
])  # bench's --device is checked when it runs (rc 2, one line: tests/test_bench.py)
def test_eval_sweep_and_bench_check_their_numbers_and_device_in_argparse(argv, capsys):
    from rmeeto.cli import build_parser

    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "error:" in err[-1] and argv[-2] in err[-1]


# ------------------------------------------------------------------------------------------------ 2. several ranks
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sigterm_group_when_training(procs: list, out: Path, group: int) -> list[str]:
    """Wait for the run to be stepping, SIGTERM the whole process group, return every process's stderr."""
    try:
        _wait_for(out / "log.jsonl", procs[0], seconds=240)
        time.sleep(1.5)  # loader workers up and a step or two done on every rank
        os.killpg(group, signal.SIGTERM)  # every rank AND its loader workers (and a launcher), as scancel does
        return [p.communicate(timeout=150)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def _check_saved_mid_epoch(out: Path) -> None:
    state = torch.load(out / "last.pth", weights_only=True)
    assert state["epoch"] == 0 and state["step_in_epoch"] > 0 and len(state["rng"]) == 2


@pytest.mark.slow
def test_sigterm_to_the_group_of_two_ranks_saves_and_every_rank_exits_143(tmp_path):
    """Ranks started directly (as srun does, gloo on CPU), workers on: every rank stops at the same step, rank 0
    saves, each exits 128 + SIGTERM without a traceback."""
    out = tmp_path / "run"
    cmd = _retrain_cmd(out, "--from-scratch", "--alpha", "0", "--epochs", "1", "-b", "32", "-j", "2")
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = _env(RMEETO_DEBUG_STEP_SLEEP="0.3", RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                   LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        group = {"process_group": 0 if rank == 0 else procs[0].pid}  # one process group, as srun's job step
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      **group))
    errs = _sigterm_group_when_training(procs, out, procs[0].pid)
    for p, err in zip(procs, errs):
        assert p.returncode == 128 + signal.SIGTERM, err[-3000:]
        assert "Traceback" not in err
    assert "stopped by SIGTERM" in errs[0]
    _check_saved_mid_epoch(out)


@pytest.mark.slow
def test_sigterm_to_a_torchrun_group_saves_on_every_rank_and_resumes(tmp_path):
    """Under torchrun the launcher gets the signal too (and reports it in its own way: exit 1 and its
    SignalException); the ranks must still stop together and save, with no traceback of ours."""
    out = tmp_path / "run"
    cmd = _retrain_cmd(out, "--from-scratch", "--alpha", "0", "--epochs", "1", "-b", "32", "-j", "2")
    cmd[1:3] = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "rmeeto"]
    proc = subprocess.Popen(cmd, env=_env(RMEETO_DEBUG_STEP_SLEEP="0.3"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    (err,) = _sigterm_group_when_training([proc], out, proc.pid)
    assert "stopped by SIGTERM" in err, err[-3000:]
    ours = err.split("Traceback")[1:]  # torchrun's own SignalException traceback is not ours
    assert all("rmeeto" not in t.split("SignalException")[0] for t in ours), err[-3000:]
    _check_saved_mid_epoch(out)
    done = subprocess.run(cmd + ["--resume", "auto"], env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert torch.load(out / "last.pth", weights_only=True)["epoch"] == 1

"""The README's multi-node and elastic commands, for real on one host (gloo, CPU, the tiny 16 px model on digits).

- Two ``torchrun --nnodes 2 --nproc_per_node 1`` launches meeting through a c10d rendezvous on localhost form
  one job whose result equals a single process with the same global batch.
- ``torchrun --max-restarts 1`` with a worker SIGKILLed mid-epoch (``RMEETO_DEBUG_KILL_AT_STEP``, first attempt
  only): the restarted worker resumes from the last in-epoch checkpoint (``--resume auto``) and ends bitwise
  where an uninterrupted run ends.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _train_common import MODEL, read_log as _log, subprocess_env as _env

pytestmark = pytest.mark.slow


def _retrain_args(out: Path, *extra: str) -> list[str]:
    return ["retrain", "--model", MODEL, "--out", str(out), "-j", "0", "--no-progress", "--device", "cpu", *extra]


def _torchrun(*launch: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *launch, "-m", "rmeeto"]


def _metrics(record: dict) -> dict:
    return {k: record[k] for k in ("epoch", "train_loss", "top1", "top5", "val_loss", "lr")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.full  # 46 s of the default tier; test_train.py checks 2 gloo processes == 1 there; CI runs this
def test_two_node_launch_on_localhost_matches_one_process(tmp_path):
    common = ["--from-scratch", "--alpha", "0", "--epochs", "1", "--lr", "8e-3", "--drop-path", "0"]
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, "-m", "rmeeto", *_retrain_args(one, *common, "-b", "64")], env=_env(),
                   check=True, capture_output=True, timeout=300)
    port = _free_port()
    nodes = [
        subprocess.Popen(
            _torchrun("--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(rank), "--rdzv_backend", "c10d",
                      "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "rmeeto-test")
            + _retrain_args(two, *common, "-b", "32"),
            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in (0, 1)
    ]
    outputs = []
    try:
        for node in nodes:
            outputs.append(node.communicate(timeout=300))
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-3000:]
    (a,), (b,) = _log(one), _log(two)
    # the same global batches and augmentations; only the all-reduce changes the float summation order
    assert abs(a["train_loss"] - b["train_loss"]) < 1e-3
    assert abs(a["top1"] - b["top1"]) <= 1.0
    assert abs(a["val_loss"] - b["val_loss"]) < 1e-2
    assert b["lr"] == pytest.approx(a["lr"])


def test_elastic_restart_resumes_and_matches_an_uninterrupted_run(tmp_path):
    # drop path and mixup draw random numbers: the restarted worker must draw the same ones after resuming
    flags = ["--from-scratch", "--alpha", "0", "--epochs", "1", "-b", "64", "--lr", "8e-3", "--drop-path", "0.1",
             "--mixup", "0.8", "--cutmix", "1.0", "--save-every-steps", "2", "--resume", "auto"]
    launch = ("--standalone", "--nnodes", "1", "--nproc_per_node", "1", "--max-restarts", "1")
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    done = subprocess.run(_torchrun(*launch) + _retrain_args(ref, *flags), env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # killed after step 5, past the checkpoint of step 4: the restart redoes step 5 from that checkpoint
    done = subprocess.run(_torchrun(*launch) + _retrain_args(killed, *flags), env=_env(RMEETO_DEBUG_KILL_AT_STEP="5"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # the second attempt continued from the last.pth written at optimizer step 4
    assert "resumed from" in done.stderr and "at epoch 0 batch 4 (step 4)" in done.stderr, done.stderr[-3000:]
    assert [_metrics(r) for r in _log(killed)] == [_metrics(r) for r in _log(ref)]
    a = torch.load(ref / "last.pth", weights_only=True)["model"]
    b = torch.load(killed / "last.pth", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)

"""`rmeeto models` and `rmeeto info`, run in-process."""

from __future__ import annotations

import argparse
import json
import os
import re

import pytest
import torch

from rmeeto import create_model
from rmeeto.cli import main


def test_models_table(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "params", "tokens", "input", "GFLOPs", "GFLOPs_paper_merge", "description"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert "25,796,584" in rows["vim_small_patch16_224"] and " 197 " in rows["vim_small_patch16_224"]
    assert "3x224x224" in rows["vim_small_patch16_224"] and "Vim-S" in rows["vim_small_patch16_224"]
    assert "7,148,008" in rows["vim_tiny_patch16_224"] and "97,598,440" in rows["vim_base_patch16_224"]
    # paper-formula GFLOPs, unmerged then with the paper merge preset
    assert " 5.077 " in rows["vim_small_patch16_224"] and " 3.585 " in rows["vim_small_patch16_224"]
    assert " 1.449 " in rows["vim_tiny_patch16_224"] and " 1.285 " in rows["vim_tiny_patch16_224"]


def test_models_json_and_pattern(capsys):
    assert main(["models", "vim_tiny", "--json"]) == 0  # "tiny" alone also matches VideoMamba and DeiT rows
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["vim_tiny_patch16_224"]
    assert rows[0]["params"] == 7_148_008 and rows[0]["tokens"] == 197 and rows[0]["input"] == [3, 224, 224]


def test_models_unknown_pattern_is_an_error(capsys):
    assert main(["models", "resnet*"]) == 2
    assert "no model matches 'resnet*'" in capsys.readouterr().err


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = create_model("vim_test_patch4_16")
    path = tmp_path / "ckpt.pth"
    sd = {"module." + k: v for k, v in model.state_dict().items()}
    torch.save({"model": sd, "model_ema": model.state_dict(), "epoch": 12,
                "args": argparse.Namespace(model="vim_test_patch4_16")}, path)
    return path


def test_info_text(capsys, checkpoint):
    assert main(["info", str(checkpoint)]) == 0
    out = capsys.readouterr().out
    assert "vim_test_patch4_16" in out and "57,418 parameters" in out and "75 tensors" in out
    assert re.search(r"^EMA weights +yes", out, re.M) and re.search(r"^epoch +12$", out, re.M) and "'module.'" in out
    assert "input 16x16 (17 tokens)" in out and "10 classes" in out


def test_info_json(capsys, checkpoint):
    assert main(["info", str(checkpoint), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"] == "vim_test_patch4_16" and info["has_ema"] and info["epoch"] == 12
    assert info["arch"]["depth"] == 4 and info["arch"]["patch_size"] == 4 and info["backbone"] == "vim"


def test_info_names_a_vit_checkpoint_as_a_vit(capsys, tmp_path):
    """A ViT's weights share patch_embed's shape with a Vim's: they once matched vim_test_patch4_16."""
    import rmeeto
    from rmeeto.checkpoint import save_checkpoint

    path = save_checkpoint({"module." + k: v for k, v in
                            rmeeto.create_model("vit_test_patch4_16", num_classes=3).state_dict().items()},
                           tmp_path / "vit.pth")
    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backbone"] == "vit" and info["model"] == "vit_test_patch4_16"
    assert info["model_overrides"] == {"num_classes": 3} and info["arch"]["depth"] == 4
    assert info["arch"]["num_tokens"] == 17 and info["arch"]["d_state"] is None
    assert main(["info", str(path)]) == 0
    assert "architecture  ViT, embed_dim 32, depth 4" in capsys.readouterr().out


class MarkerWriter:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_info_refuses_malicious_checkpoint(capsys, tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "payload": MarkerWriter(marker)}, path)
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rmeeto info: error: refusing to load") and str(path) in err
    assert not marker.exists()


def test_info_missing_file(capsys, tmp_path):
    assert main(["info", os.fspath(tmp_path / "nope.pth")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_checkpoint_of_the_other_backbone_is_named_in_the_load_error(tmp_path):
    import pytest

    import rmeeto
    from rmeeto.checkpoint import CheckpointError, save_checkpoint

    vit = save_checkpoint(rmeeto.create_model("vit_test_patch4_16", num_classes=3), tmp_path / "vit.pth")
    vim = save_checkpoint(rmeeto.create_model("vim_test_patch4_16"), tmp_path / "vim.pth")
    with pytest.raises(CheckpointError, match=r"looks like vit_test_patch4_16, num_classes=3\)"):
        rmeeto.create_model("vim_test_patch4_16", checkpoint_path=str(vit))
    with pytest.raises(CheckpointError, match=r"looks like vim_test_patch4_16\)"):
        rmeeto.create_model("vit_test_patch4_16", checkpoint_path=str(vim))


@pytest.mark.parametrize("error, code", [("TrainError", 2), ("NonFiniteLossError", 1)])
def test_training_errors_are_one_line_with_their_exit_code(error, code, capsys, monkeypatch):
    """retrain and ablate report the training loop's errors alike: a setup problem (TrainError) as bad input,
    exit 2; a loss that diverged (NonFiniteLossError) as a failed run, exit 1; one line, no traceback."""
    import rmeeto.ablate
    import rmeeto.train

    def fail(*args, **kwargs):
        raise getattr(rmeeto.train, error)("the message")

    monkeypatch.setattr(rmeeto.train, "train", fail)
    monkeypatch.setattr(rmeeto.ablate, "run_ablation", fail)
    for argv in (["retrain", "--model", "vim_test_patch4_16", "--from-scratch", "--alpha", "0"],
                 ["ablate", "vim_test_patch4_16", "--out", "unused", "--no-progress"]):
        assert main(argv) == code, argv
        err = capsys.readouterr().err
        assert err == f"rmeeto {argv[0]}: error: the message\n", err


def test_entry_in_a_torchrun_job_exits_without_finalization(monkeypatch, capsys):
    """Under torchrun (WORLD_SIZE > 1) the console entry flushes the streams and ends the process with os._exit and
    the command's code, so a rank cannot abort in the interpreter's teardown after its work; alone (no WORLD_SIZE,
    or 1, or a malformed value), it exits through sys.exit as before."""
    import rmeeto.cli as cli

    calls = []

    def fake_exit(code):
        calls.append(("os._exit", code))
        raise SystemExit(code)

    monkeypatch.setattr(cli, "main", lambda: print("done") or 3)
    monkeypatch.setattr(cli.os, "_exit", fake_exit)
    for world, expect in (("2", "os._exit"), ("1", None), ("x", None), (None, None)):
        calls.clear()
        if world is None:
            monkeypatch.delenv("WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("WORLD_SIZE", world)
        with pytest.raises(SystemExit) as ended:
            cli.entry()
        assert ended.value.code == 3
        assert calls == ([(expect, 3)] if expect else []), world
    assert capsys.readouterr().out.count("done") == 4

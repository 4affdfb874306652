"""The digits demo's order section (Vim vs ViT): findings follow the numbers; the section runs end to end. The
video demo's settings are validated (its quick run is in tests/cli/test_video_cli.py)."""

from __future__ import annotations

import json

import pytest
import torch

from rmeeto import create_model
from rmeeto.checkpoint import save_checkpoint
from rmeeto.demo import MODEL, VIT_MODEL, DemoSettings, _order_md, order_findings, run_order_section
from rmeeto.models import get_config


def _rows(vim: dict, vit: dict) -> list[dict]:
    return [{"model": m, "setting": s, "training": "free", "top1": v}
            for m, table in ((MODEL, vim), (VIT_MODEL, vit)) for s, v in table.items()]


def _table(ordered, unordered, pruned, shuffled):
    return {"unmerged": 90.0, "merge ordered": ordered, "merge unordered": unordered, "prune ordered": pruned,
            "shuffle 0": ordered, "shuffle 0.5": shuffled[0], "shuffle 0.7": shuffled[1]}


def test_order_findings_follow_the_numbers():
    vim_hurt = _table(88, 70, 80, (75, 65))
    vit_calm = _table(87, 87, 85, (86.5, 86))
    f = order_findings(_rows(vim_hurt, vit_calm), val_images=360)
    assert [x["holds"] for x in f] == [True, True, True, True]
    assert "-18.00 points for the Vim and +0.00 for the ViT" in f[0]["text"]
    assert "-18.00 points on average for the Vim and -0.75 for the ViT" in f[1]["text"]
    assert f[-1]["claim"] == "order matters more for Mamba than for ViT"
    # swap the roles: the claim fails, and it says so
    g = order_findings(_rows(vit_calm, vim_hurt), val_images=360)
    assert [x["holds"] for x in g] == [False, False, False, False]
    # a gap smaller than two validation images is called out as no clear difference
    close = order_findings(_rows(_table(88, 87.5, 88, (88, 88)), _table(88, 88, 88, (88, 88))), val_images=360)
    assert close[0]["holds"] and "not a clear difference" in close[0]["note"]


def test_order_section_quick_runs_both_models_and_reports(tmp_path):
    """The section on given weights (the ViT's training is the loop every training uses; tests/test_ablate.py
    re-trains a ViT through it) and 48 validation images, to stay cheap on a CPU."""
    torch.manual_seed(0)
    vim_ckpt = save_checkpoint(create_model(MODEL), tmp_path / "vim.pth")
    vit_ckpt = save_checkpoint(create_model(VIT_MODEL), tmp_path / "vit.pth")
    settings = DemoSettings.quick(order_shuffle_rates=(0.0, 0.7))
    order = run_order_section(tmp_path, settings, str(vim_ckpt), progress=False, vit_checkpoint=str(vit_ckpt),
                              limit=48)
    assert order["vit_history"] == [] and not (tmp_path / "order" / "vit").exists()
    rows = order["rows"]
    assert {r["model"] for r in rows} == {MODEL, VIT_MODEL} and len(rows) == 2 * 7
    assert all(r["n"] == 48 and r["training"] == "free" for r in rows)
    by = {(r["model"], r["setting"]): r for r in rows}
    assert by[(MODEL, "merge ordered")]["tokens"] == by[(VIT_MODEL, "merge ordered")]["tokens"] == 45
    f = order["findings"]
    assert [x["claim"] for x in f][-1] == "order matters more for Mamba than for ViT"
    assert f[-1]["holds"] == (f[0]["holds"] and f[1]["holds"])
    assert (tmp_path / "order" / "ablate.csv").exists() and (tmp_path / "order" / "ablate.png").exists()
    md = "\n".join(_order_md(order))
    assert "## Order: Vim vs ViT" in md and "| shuffle 0.7 |" in md
    assert "for reference only" in md and "Vim-Ti/S/B -9.4 / -6.6 / -3.5" in md and "DeiT-S -0.5 / -1.2 / -2.8" in md
    json.dumps(order)  # goes into report.json as is


def test_demo_settings_order_switch():
    assert DemoSettings().order and DemoSettings.quick().vit_epochs == 1
    assert not DemoSettings(order=False).order
    with pytest.raises(ValueError, match="vit_epochs"):
        DemoSettings(vit_epochs=0)


def test_video_demo_settings_reject_clips_the_square_cannot_cross():
    from rmeeto.demo_video import VIDEO_MODEL, VideoDemoSettings

    arch = get_config(VIDEO_MODEL).arch
    assert arch.num_tokens == 65 and arch.tubelet_size == 2 and arch.num_classes == 4  # the 4 directions
    VideoDemoSettings(clip_size=16, square=6, clip_frames=11)  # 10 px of room, 10 px of travel: fits
    with pytest.raises(ValueError, match="cannot move 11 px"):
        VideoDemoSettings(clip_size=16, square=6, clip_frames=12)
    with pytest.raises(ValueError, match="clip_size must be even"):
        VideoDemoSettings(clip_size=15)
    with pytest.raises(ValueError, match="square must be in 1..15"):
        VideoDemoSettings(square=16)
    with pytest.raises(ValueError, match="alpha"):
        VideoDemoSettings(alpha=1.5)
    with pytest.raises(ValueError, match="num_merged"):
        VideoDemoSettings(num_merged=0)


def test_video_demo_validation_frames_are_one_step_apart():
    """The defaults' clips give the model's 8 validation frames one frame (1 px of motion) apart, and each
    tubelet of 2 frames sees motion: the reason the demo uses 9-frame clips."""
    from rmeeto.demo_video import VIDEO_MODEL, VideoDemoSettings
    from rmeeto.video import sample_frame_indices

    s, arch = VideoDemoSettings(), get_config(VIDEO_MODEL).arch
    assert sample_frame_indices(s.clip_frames, arch.num_frames, "val") == list(range(8))


def test_demo_refuses_an_out_folder_holding_files_it_did_not_write(tmp_path, capsys):
    """The demo replaces its teacher/ and retrain/ runs on every start: a folder with anything else in it (a
    training run's checkpoints, say) is refused in one line before any work, and left as it was."""
    from rmeeto.cli import main

    out = tmp_path / "runs"
    out.mkdir()
    (out / "best.pth").write_bytes(b"mine")
    assert main(["demo", "--quick", "--no-order", "--no-progress", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "holds files no demo wrote (best.pth)" in err and "--overwrite" in err
    assert (out / "best.pth").read_bytes() == b"mine" and sorted(p.name for p in out.iterdir()) == ["best.pth"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["demo", "--quick", "--out", str(afile)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err

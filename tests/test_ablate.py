"""``rmeeto ablate`` end to end on the tiny models and the digits, resume per cell included."""

from __future__ import annotations

import csv

import pytest
import torch

import rmeeto.evaluate as revaluate
from rmeeto import create_model
from rmeeto.ablate import ablation_cells, read_rows
from rmeeto.checkpoint import save_checkpoint
from rmeeto.cli import main

MODELS = ("vim_test_patch4_16", "vit_test_patch4_16")


def test_cells_cover_order_prune_and_shuffle_with_each_backbones_preset():
    vim = ablation_cells("vim_test_patch4_16")
    vit = ablation_cells("vit_test_patch4_16", shuffle_rates=(0.0, 0.5))
    assert [c.setting for c in vim] == [
        "unmerged", "merge ordered", "merge unordered", "prune ordered", "prune unordered",
        "shuffle 0", "shuffle 0.1", "shuffle 0.3", "shuffle 0.5", "shuffle 0.7",
    ]
    assert vim[0].config is None and vim[1].config.interval == 2 and vit[1].config.interval == 1
    assert vim[4].config.mode == "prune" and not vim[4].config.ordered
    shuffled = vit[-1].config
    assert shuffled.shuffle_rate == 0.5 and shuffled.shuffle_in_eval and shuffled.ordered and shuffled.mode == "merge"
    assert ablation_cells("vit_test_patch4_16", num_merged=3)[1].config.num_merged == 3


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    out = []
    for name in MODELS:
        torch.manual_seed(1)
        out.append(str(save_checkpoint(create_model(name), tmp_path_factory.mktemp(name) / "w.pth")))
    return out


def test_ablate_two_models_writes_csv_png_and_resumes_per_cell(tmp_path, checkpoints, monkeypatch):
    def cmd(limit):
        return ["ablate", *MODELS, "--checkpoint", *checkpoints, "--limit", str(limit), "--batch-size", "16",
                "--workers", "0", "--device", "cpu", "--shuffle-rates", "0,0.7", "--out", str(tmp_path),
                "--no-progress"]

    args = cmd(30)
    assert main(args) == 0
    rows = read_rows(tmp_path / "ablate.csv")
    assert len(rows) == 2 * 7 and (tmp_path / "ablate.png").stat().st_size > 10_000
    for name in MODELS:
        mine = {r["setting"]: r for r in rows if r["model"] == name}
        assert mine["unmerged"]["top1_drop"] == 0 and mine["unmerged"]["n"] == 30
        # the shuffle-0 cell is the plain ordered merge: same numbers
        assert mine["shuffle 0"]["top1"] == mine["merge ordered"]["top1"]
        assert mine["shuffle 0"]["loss"] == pytest.approx(mine["merge ordered"]["loss"], rel=1e-6)
        for r in mine.values():
            assert r["top1_drop"] == pytest.approx(r["top1"] - mine["unmerged"]["top1"])
        assert mine["merge ordered"]["tokens"] < mine["unmerged"]["tokens"]
        assert mine["merge ordered"]["gflops"] < mine["unmerged"]["gflops"]
    assert {r["backbone"] for r in rows} == {"vim", "vit"}

    # drop two cells from the table: a re-run evaluates exactly those two, and the table is whole again
    with (tmp_path / "ablate.csv").open(newline="") as f:
        table = list(csv.DictReader(f))
    kept = [r for r in table if not (r["model"] == MODELS[1] and r["setting"] in ("prune ordered", "shuffle 0.7"))]
    with (tmp_path / "ablate.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(kept)
    calls = []
    real = revaluate.evaluate

    def counting(model, loader, **kw):
        calls.append(kw.get("desc"))
        return real(model, loader, **kw)

    monkeypatch.setattr(revaluate, "evaluate", counting)
    assert main(args) == 0
    assert sorted(calls) == [f"{MODELS[1]} prune ordered", f"{MODELS[1]} shuffle 0.7"]
    again = read_rows(tmp_path / "ablate.csv")
    assert len(again) == len(rows)
    before = {(r["model"], r["setting"]): r["top1"] for r in rows}
    assert {(r["model"], r["setting"]): r["top1"] for r in again} == before  # same seed, same numbers

    # another --limit is another experiment: nothing is reused
    calls.clear()
    assert main(cmd(20)) == 0
    assert len(calls) == 14 and len(read_rows(tmp_path / "ablate.csv")) == 28


def test_ablate_rejects_bad_input(tmp_path, capsys):
    assert main(["ablate", *MODELS, "vim_test_patch4_16", "--out", str(tmp_path)]) != 0
    assert "one or two models" in capsys.readouterr().err
    assert main(["ablate", MODELS[0], "--checkpoint", "a.pth", "b.pth", "--out", str(tmp_path)]) != 0
    assert "one path per model (1), got 2" in capsys.readouterr().err
    assert main(["ablate", MODELS[0], "--checkpoint", str(tmp_path / "a.pth"), "--out", str(tmp_path)]) != 0
    assert "does not exist" in capsys.readouterr().err
    assert main(["ablate", MODELS[0], "--retrain-epochs", "1", "--out", str(tmp_path)]) != 0
    assert "checkpoint" in capsys.readouterr().err


def test_ablate_retraining_cell_distils_through_the_training_loop(tmp_path, checkpoints):
    """One re-trained cell of the ViT: trained by rmeeto.train.train (its checkpoint stores the cell's merge
    config) and recorded beside the training-free one; a re-run reuses both."""
    from rmeeto.evaluate import stored_merge_config

    args = ["ablate", MODELS[1], "--checkpoint", checkpoints[1], "--limit", "20", "--workers", "0", "--device", "cpu",
            "--only", "merge unordered", "--retrain-epochs", "1", "--retrain-batch-size", "128",
            "--out", str(tmp_path), "--no-progress"]
    assert main(args) == 0
    rows = read_rows(tmp_path / "ablate.csv")
    assert [(r["setting"], r["training"]) for r in rows] == [
        ("unmerged", "free"), ("merge unordered", "free"), ("merge unordered", "retrained 1 ep")]
    (ckpt,) = (tmp_path / "retrain").glob(f"{MODELS[1]}_merge_unordered_*/last.pth")
    stored = stored_merge_config(str(ckpt))
    assert stored is not None and not stored.ordered and stored.interval == 1
    mtime = ckpt.stat().st_mtime
    assert main(args) == 0 and ckpt.stat().st_mtime == mtime  # nothing re-trained
    # another lr is another experiment: the cell is trained again, in its own folder, and recorded beside
    other_lr = [*args[:-3], "--retrain-lr", "1e-5", "--out", str(tmp_path), "--no-progress"]
    assert main(other_lr) == 0 and ckpt.stat().st_mtime == mtime
    assert len(list((tmp_path / "retrain").glob(f"{MODELS[1]}_merge_unordered_*/last.pth"))) == 2
    rows = read_rows(tmp_path / "ablate.csv")
    assert sorted(r["retrain_lr"] for r in rows if r["training"] != "free") == ["1e-05", "2e-05"]
    assert main([*args[:-3], "--only", "no such", "--out", str(tmp_path)]) != 0


def test_plot_leaves_room_for_the_labels_of_bars_at_zero(tmp_path, monkeypatch):
    """Bars of +0.0 are labelled above the zero line: the y range must reach past 0 (matplotlib's autoscale
    stops at a bar's edge, and the labels then ran into the panel's title), and below the lowest bar's label."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from rmeeto.ablate import plot_ablation

    limits = []
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (limits.extend(ax.get_ylim() for ax in fig.axes),
                                                                  save(fig, *a, **k)))
    rows = [dict(model="vit_digits_patch4_32", setting=s, training="free", top1=t, top1_drop=d)
            for s, t, d in (("unmerged", 78.9, 0.0), ("merge ordered", 78.9, 0.0), ("prune ordered", 72.8, -6.1))]
    plot_ablation(rows, tmp_path / "a.png")
    assert (tmp_path / "a.png").stat().st_size > 0 and limits
    for lo, hi in limits:
        assert hi > 0.3 and lo < -6.4, (lo, hi)


@pytest.fixture
def calls(monkeypatch) -> list:
    """The settings evaluated, in order: the cells ablate scored (not answered from its table; a re-training's
    own validation passes, which rmeeto.train may route here too, are not cells)."""
    seen = []
    real = revaluate.evaluate

    def counting(model, loader, **kw):
        model_name, _, setting = kw.get("desc", "").partition(" ")
        if model_name in MODELS:
            seen.append(setting)
        return real(model, loader, **kw)

    monkeypatch.setattr(revaluate, "evaluate", counting)
    return seen


def test_ablate_reuses_a_row_only_for_the_same_experiment(tmp_path, checkpoints, calls, capsys):
    """Rows are reused only when every setting that moves the numbers agrees: another --num-merged re-runs the
    merged cells (the unmerged one stays), random weights are never reused, a damaged table is named."""
    base = ["ablate", MODELS[1], "--limit", "10", "--batch-size", "16", "--workers", "0", "--device", "cpu",
            "--only", "merge ordered", "--shuffle-rates", "0", "--out", str(tmp_path), "--no-progress"]
    trained = [*base, "--checkpoint", checkpoints[1]]
    assert main(trained) == 0 and calls == ["unmerged", "merge ordered"]
    calls.clear()
    assert main(trained) == 0 and calls == []
    assert main([*trained, "--num-merged", "1"]) == 0 and calls == ["merge ordered"]
    rows = read_rows(tmp_path / "ablate.csv")
    assert sorted(r["num_merged"] for r in rows if r["setting"] == "merge ordered") == [1, 2]
    calls.clear()
    assert main(base) == 0 and main(base) == 0  # random weights: another model each run
    assert calls == ["unmerged", "merge ordered"] * 2
    # new weights saved over the same file name are another experiment too
    weights = tmp_path / "w.pth"
    torch.manual_seed(5)
    save_checkpoint(create_model(MODELS[1]), weights)
    again = [*base, "--checkpoint", str(weights)]
    calls.clear()
    assert main(again) == 0 and main(again) == 0 and calls == ["unmerged", "merge ordered"]
    torch.manual_seed(6)
    save_checkpoint(create_model(MODELS[1]), weights)
    calls.clear()
    assert main(again) == 0 and calls == ["unmerged", "merge ordered"]

    table = (tmp_path / "ablate.csv").read_text().splitlines()
    cells = table[2].split(",")
    cells[table[0].split(",").index("top1")] = "x"
    table[2] = ",".join(cells)
    (tmp_path / "ablate.csv").write_text("\n".join(table) + "\n")
    capsys.readouterr()
    assert main(trained) == 2
    err = capsys.readouterr().err
    assert "ablate.csv line 3:" in err and "not a number" in err and len(err.strip().splitlines()) == 1


def test_ablate_records_no_row_for_unreadable_data_or_nan_weights(tmp_path, capsys):
    """A 0 % or NaN row would read as a measurement: both are one-line errors and the table stays empty."""
    for split in ("a", "b"):
        (tmp_path / "bad" / split).mkdir(parents=True)
        (tmp_path / "bad" / split / "0.jpg").write_bytes(b"not a jpeg")
    nan = tmp_path / "nan.pth"
    save_checkpoint({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                     for k, v in create_model(MODELS[1]).state_dict().items()}, nan)
    base = [MODELS[1], "--batch-size", "16", "--workers", "0", "--device", "cpu", "--only", "merge ordered",
            "--shuffle-rates", "0", "--no-progress"]
    assert main(["ablate", *base, "--data", str(tmp_path / "bad"), "--out", str(tmp_path / "o1")]) == 2
    assert "no image of" in capsys.readouterr().err
    assert main(["ablate", *base, "--checkpoint", str(nan), "--limit", "8", "--out", str(tmp_path / "o3")]) == 2
    err = capsys.readouterr().err
    assert "unmerged (free): the model's outputs are not finite (NaN or inf) for 8 of 8 images: checkpoint" in err
    assert read_rows(tmp_path / "o3" / "ablate.csv") == []


def test_ablate_reruns_cells_when_the_data_folder_changes(tmp_path, checkpoints, calls):
    """The same --data path holding other files (an image replaced, one added) is another experiment: its cells
    are scored again, not answered from the rows of the old files."""
    from PIL import Image

    data = tmp_path / "data"
    for split in ("train", "val"):
        for c in range(10):  # the checkpoint's head has 10 classes
            (data / split / f"c{c}").mkdir(parents=True)
            Image.new("RGB", (32, 32), (25 * c, 60, 90)).save(data / split / f"c{c}" / "0.jpg")
    argv = ["ablate", MODELS[1], "--checkpoint", checkpoints[1], "--data", str(data), "--batch-size", "8",
            "--workers", "0", "--device", "cpu", "--only", "merge ordered", "--shuffle-rates", "0", "--out",
            str(tmp_path / "out"), "--no-progress"]
    assert main(argv) == 0 and calls == ["unmerged", "merge ordered"]
    calls.clear()
    assert main(argv) == 0 and calls == []  # the same files: every row reused
    Image.new("RGB", (32, 32), (255, 255, 255)).save(data / "val" / "c0" / "0.jpg", quality=50)
    assert main(argv) == 0 and calls == ["unmerged", "merge ordered"]
    calls.clear()
    Image.new("RGB", (32, 32), (0, 0, 0)).save(data / "val" / "c1" / "9.jpg")
    assert main(argv) == 0 and calls == ["unmerged", "merge ordered"]
    rows = read_rows(tmp_path / "out" / "ablate.csv")
    assert len({r["data_digest"] for r in rows}) == 3 and all(len(r["data_digest"]) == 16 for r in rows)
    # each merged row's drop is against the unmerged row of its own files
    for r in rows:
        base = next(b for b in rows if b["setting"] == "unmerged" and b["data_digest"] == r["data_digest"])
        assert r["top1_drop"] == pytest.approx(r["top1"] - base["top1"])


def test_ablate_retrains_when_the_training_split_changes(tmp_path, checkpoints, calls):
    """A re-trained row is keyed by the training split's files too (what it was trained on): a replaced training
    image re-trains that cell, in a folder of its own, while the training-free rows (which never read the
    training split) are reused."""
    from PIL import Image

    data = tmp_path / "data"
    for split in ("train", "val"):
        for c in range(10):
            (data / split / f"c{c}").mkdir(parents=True)
            Image.new("RGB", (16, 16), (25 * c, 60, 90)).save(data / split / f"c{c}" / "0.jpg")
    argv = ["ablate", MODELS[1], "--checkpoint", checkpoints[1], "--data", str(data), "--batch-size", "8",
            "--workers", "0", "--device", "cpu", "--only", "merge ordered", "--shuffle-rates", "0",
            "--retrain-epochs", "1", "--retrain-batch-size", "8", "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(argv) == 0 and calls == ["unmerged", "merge ordered", "merge ordered"]
    calls.clear()
    assert main(argv) == 0 and calls == []
    Image.new("RGB", (16, 16), (255, 255, 255)).save(data / "train" / "c3" / "0.jpg", quality=50)
    assert main(argv) == 0 and calls == ["merge ordered"]  # only the re-trained cell
    rows = read_rows(tmp_path / "out" / "ablate.csv")
    retrained = [r for r in rows if r["training"] != "free"]
    assert len(retrained) == 2 and len({r["train_digest"] for r in retrained}) == 2
    assert all(r["train_digest"] == "" for r in rows if r["training"] == "free")
    assert len(list((tmp_path / "out" / "retrain").glob("*/last.pth"))) == 2

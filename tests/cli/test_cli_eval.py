"""Training-free evaluation: evaluate()/measure_throughput(), token groups, and the eval/sweep/visualize commands
end to end on the tiny 16px model with a few digits images."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from rmeeto.checkpoint import save_checkpoint
from rmeeto.cli import main
from rmeeto.data import DigitsDataset
from rmeeto.evaluate import evaluate, measure_throughput
from rmeeto.merge import MergeConfig, apply_merge
from rmeeto.models import create_model
from rmeeto.visualize import DROPPED, token_groups

MODEL = "vim_test_patch4_16"  # 16x16 input, 4x4 patches: 17 tokens, 4 layers, 10 classes
RUN = ["--device", "cpu", "--workers", "0"]

# class scores of the biased checkpoint: predicts 3, then 1, 4, 0, 9 (top-5), then the rest
BIAS_ORDER = [3, 1, 4, 0, 9, 2, 6, 5, 8, 7]


class LookupLogits(nn.Module):
    """'Images' are [batch, 1] sample indices; returns the fixed logits of each sample."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.register_buffer("table", logits)

    def forward(self, x):
        return self.table[x[:, 0].long()]


@pytest.fixture(scope="module")
def biased_checkpoint(tmp_path_factory):
    """A vim_test_patch4_16 checkpoint whose head ignores the features and ranks classes by BIAS_ORDER, so
    its accuracy on any image set is known exactly from the labels."""
    torch.manual_seed(0)
    model = create_model(MODEL)
    with torch.no_grad():
        model.head.weight.zero_()
        for rank, cls in enumerate(BIAS_ORDER):
            model.head.bias[cls] = 10.0 - rank
    return str(save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "biased.pth"))


def _labels_of_limit(limit: int) -> torch.Tensor:
    """Labels of the evenly spread --limit subset of the digits val split, as the CLI picks it."""
    ds = DigitsDataset("val", 16)
    step = len(ds) / limit
    return ds.labels[[int(i * step) for i in range(limit)]]


# ============================================================================================ library
def test_evaluate_counts_top1_top5_and_loss_exactly():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 8, generator=g)
    order = logits.argsort(dim=-1, descending=True)
    # labels at rank 0 (top-1 hit), rank 3 (top-5 only) and rank 6 (miss), mixed over the samples
    ranks = [0, 3, 6, 0, 4, 5, 1]
    targets = torch.tensor([order[i, r].item() for i, r in enumerate(ranks)])
    idx = torch.arange(7)[:, None].float()
    loader = [(idx[:4], targets[:4]), None, (idx[4:], targets[4:])]  # a None batch (all images unreadable)
    out = evaluate(LookupLogits(logits), loader, progress=False)
    assert out["n"] == 7
    assert out["top1"] == pytest.approx(100 * 2 / 7)
    assert out["top5"] == pytest.approx(100 * 5 / 7)
    assert out["loss"] == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-6)
    assert out["seconds"] > 0 and out["images_per_s"] > 0


def _evaluate_shard(rank: int, world: int, port: int, logits: torch.Tensor, targets: torch.Tensor, results):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        shard = torch.arange(rank, len(targets), world)  # as a DistributedSampler would, without padding
        loader = [(shard[:, None].float(), targets[shard])]
        results[rank] = evaluate(LookupLogits(logits), loader, progress=True)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_evaluate_sums_counts_over_distributed_ranks():
    import socket

    import torch.multiprocessing as mp

    g = torch.Generator().manual_seed(1)
    logits, targets = torch.randn(9, 6, generator=g), torch.randint(0, 6, (9,), generator=g)
    full = evaluate(LookupLogits(logits), [(torch.arange(9)[:, None].float(), targets)], progress=False)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_evaluate_shard, args=(2, port, logits, targets, results), nprocs=2)
    for rank in (0, 1):  # every rank gets the global numbers
        assert results[rank]["n"] == 9
        for key in ("top1", "top5", "loss"):
            assert results[rank][key] == pytest.approx(full[key])


def test_evaluate_top5_is_capped_at_the_class_count_and_restores_train_mode():
    logits = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    model = LookupLogits(logits).train()
    out = evaluate(model, [(torch.tensor([[0.0], [1.0]]), torch.tensor([0, 1]))], progress=False)
    assert out["top1"] == 0.0 and out["top5"] == 100.0  # top-3 of 3 classes always hits
    assert model.training


def test_measure_throughput_cpu_leaves_model_alone():
    model = create_model(MODEL).train()
    out = measure_throughput(model, batch_size=2, img_size=16, device="cpu", warmup=0, repeats=1)
    assert out["images_per_s"] > 0
    assert out["ms_per_image"] == pytest.approx(1000 / out["images_per_s"])
    assert out["peak_mem_mb"] is None
    assert model.training
    with pytest.raises(ValueError, match="CUDA"):
        measure_throughput(model, batch_size=2, img_size=16, device="cpu", dtype=torch.float16)
    # the forwards build no autograd graph (the official protocol times them under no_grad)
    grad_modes = []
    model.register_forward_pre_hook(lambda module, args: grad_modes.append(torch.is_grad_enabled()))
    measure_throughput(model, batch_size=2, img_size=16, device="cpu", warmup=0, repeats=1)
    assert grad_modes and not any(grad_modes)


@pytest.mark.parametrize("ordered", [True, False])
@pytest.mark.parametrize("mode", ["merge", "prune"])
def test_token_groups_cover_the_patch_grid_without_the_class_token(ordered, mode):
    torch.manual_seed(0)
    model = create_model(MODEL)
    apply_merge(model, MergeConfig(num_merged=3, ordered=ordered, mode=mode))  # layer 2: 17 -> 14 tokens
    images = torch.randn(3, 3, 16, 16)
    groups, info = token_groups(model, images)
    assert groups.shape == (3, 4, 4)
    assert info["tokens"] == 14 and info["layer"] == 3
    torch.testing.assert_close(info["logits"], model(images))
    for g in groups:
        kept = g[g != DROPPED]
        assert len(kept.unique()) == 13  # every patch token but none for the class token
        assert int((g == DROPPED).sum()) == (3 if mode == "prune" else 0)
        assert kept.max() < 13
    # the class token was never merged: its source row is itself (original middle position) only
    _, state = model.forward_tokens(images, track_source=True)
    row = state.source[:, state.cls_index]
    assert torch.equal(row, F.one_hot(torch.tensor(model.cls_position), 17).float().expand(3, -1))
    # before the merge (layer 1) every patch is its own token
    early, _ = token_groups(model, images, layer=1)
    assert all(len(g.unique()) == 16 for g in early)


# ============================================================================================ eval command
@pytest.mark.slow
def test_eval_command_json(tmp_path, biased_checkpoint):
    out = tmp_path / "eval.json"
    rc = main(["eval", MODEL, "--checkpoint", biased_checkpoint, "-r", "2", "--limit", "24", "--batch-size", "10",
               "--json", str(out), "--no-progress", *RUN])
    assert rc == 0
    result = json.loads(out.read_text())
    labels = _labels_of_limit(24)
    assert result["n"] == 24
    assert 0 <= result["top1"] <= 100
    assert result["top1"] == pytest.approx(100 * (labels == 3).float().mean().item())
    assert result["top5"] == pytest.approx(100 * torch.isin(labels, torch.tensor(BIAS_ORDER[:5])).float().mean().item())
    # 17 tokens; interval 2 on 4 layers merges at layer 2 only
    assert result["tokens_per_layer"] == [17, 17, 15, 15]
    assert result["merge"] == MergeConfig(num_merged=2).to_dict()
    assert result["model"] == MODEL and result["checkpoint"] == biased_checkpoint and result["data"] == "digits"
    assert 0 < result["gflops_paper"] and 0 < result["gflops_true"]


@pytest.mark.slow
def test_eval_command_unmerged_costs_more(tmp_path, biased_checkpoint):
    out = tmp_path / "eval.json"
    assert main(["eval", MODEL, "--checkpoint", biased_checkpoint, "--limit", "4", "--json", str(out),
                 "--no-progress", *RUN]) == 0
    result = json.loads(out.read_text())
    assert result["merge"] is None
    assert result["tokens_per_layer"] == [17, 17, 17, 17]
    from rmeeto.flops import true_flops

    assert result["gflops_true"] > true_flops(MODEL, MergeConfig(num_merged=2))["total"]


def test_eval_uses_the_merge_config_stored_by_retrain_unless_flags_say_otherwise(tmp_path):
    stored = MergeConfig(num_merged=3, mode="prune")
    ckpt = save_checkpoint(create_model(MODEL), tmp_path / "retrained.pth", model_name=MODEL,
                           merge_config=stored.to_dict())
    out = tmp_path / "eval.json"
    assert main(["eval", MODEL, "--checkpoint", str(ckpt), "--limit", "4", "--json", str(out),
                 "--no-progress", *RUN]) == 0
    result = json.loads(out.read_text())
    assert result["merge"] == stored.to_dict() and result["tokens_per_layer"] == [17, 17, 14, 14]
    assert main(["eval", MODEL, "--checkpoint", str(ckpt), "-r", "0", "--limit", "4", "--json", str(out),
                 "--no-progress", *RUN]) == 0
    assert json.loads(out.read_text())["tokens_per_layer"] == [17, 17, 17, 17]


@pytest.mark.filterwarnings("ignore::UserWarning")  # load_checkpoint announces the head it left out
def test_load_model_for_eval_refuses_a_mismatched_classifier(tmp_path):
    from rmeeto.checkpoint import CheckpointError
    from rmeeto.evaluate import load_model_for_eval

    ckpt = save_checkpoint(create_model(MODEL, num_classes=7), tmp_path / "seven.pth")
    with pytest.raises(CheckpointError, match="classifier"):
        load_model_for_eval(MODEL, str(ckpt))
    model = load_model_for_eval(MODEL, str(ckpt), MergeConfig(num_merged=2), num_classes=7)
    assert model.num_classes == 7 and not model.training and model.merge_config.num_merged == 2


def test_eval_errors_are_one_line_exit_2(tmp_path, capsys):
    assert main(["eval", MODEL, "--checkpoint", str(tmp_path / "missing.pth"), *RUN]) == 2
    err = capsys.readouterr().err
    assert "missing.pth does not exist" in err and len(err.strip().splitlines()) == 1

    assert main(["eval", MODEL, "--data", str(tmp_path / "nowhere"), *RUN]) == 2
    assert "not found" in capsys.readouterr().err

    assert main(["eval", "vim_nonexistent", *RUN]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_eval_rejects_a_checkpoint_for_other_classes(tmp_path, capsys):
    ckpt = save_checkpoint(create_model(MODEL, num_classes=7), tmp_path / "seven.pth")
    assert main(["eval", MODEL, "--checkpoint", str(ckpt), "--limit", "4", *RUN]) == 2
    err = capsys.readouterr().err
    assert "7-class" in err and "10 classes" in err


# ============================================================================================ sweep command
@pytest.mark.slow
def test_sweep_command_writes_csv_and_plot(tmp_path, biased_checkpoint):
    rc = main(["sweep", MODEL, "--checkpoint", biased_checkpoint, "--num-merged", "0,2", "--modes", "merge,prune",
               "--layouts", "ordered", "--limit", "12", "--batch-size", "12", "--throughput-batch", "2",
               "--out", str(tmp_path), "--no-progress", *RUN])
    assert rc == 0
    rows = list(csv.DictReader(open(tmp_path / "sweep.csv")))
    assert [(r["mode"], r["layout"], int(r["num_merged"]), int(r["tokens"])) for r in rows] == [
        ("merge", "ordered", 0, 17), ("merge", "ordered", 2, 15),
        ("prune", "ordered", 0, 17), ("prune", "ordered", 2, 15),
    ]
    labels = _labels_of_limit(12)
    for r in rows:  # the biased head ignores the tokens: same accuracy everywhere
        assert float(r["top1"]) == pytest.approx(100 * (labels == 3).float().mean().item())
        assert int(r["n"]) == 12 and float(r["images_per_s"]) > 0
    true = [float(r["true_gflops"]) for r in rows]
    assert true[1] < true[0] and true[3] < true[2] and true[0] == true[2]
    # r=0 runs the unmerged model: the paper formula's count is the unmerged one (no matching cost added)
    from rmeeto.flops import paper_flops

    paper = [float(r["paper_gflops"]) for r in rows]
    assert paper[0] == paper[2] == pytest.approx(paper_flops(MODEL), rel=1e-6) and paper[1] < paper[0]
    with Image.open(tmp_path / "sweep.png") as img:
        img.verify()
    with Image.open(tmp_path / "sweep.png") as img:
        assert img.width >= 800 and img.height >= 300


@pytest.mark.slow
def test_sweep_refuses_unreadable_data_and_settings_the_model_cannot_take(tmp_path, capsys):
    for cls in ("a", "b"):
        (tmp_path / "bad" / cls).mkdir(parents=True)
        (tmp_path / "bad" / cls / "0.jpg").write_bytes(b"not a jpeg")
    args = ["--num-merged", "0,1", "--no-throughput", "--out", str(tmp_path / "o"), "--no-progress", *RUN]
    assert main(["sweep", MODEL, "--data", str(tmp_path / "bad"), *args]) == 2
    assert "no image or clip of" in capsys.readouterr().err and not (tmp_path / "o" / "sweep.csv").exists()
    assert main(["sweep", "vit_test_patch4_16", "--metric", "B", *args]) == 2  # refused before loading data
    assert "metric='B' is a Vim (Mamba mixer) metric" in capsys.readouterr().err


def test_sweep_csv_write_failure_keeps_previous_table(tmp_path, biased_checkpoint, monkeypatch, capsys):
    """sweep.csv goes through a temporary file and a rename: a disk-full rename leaves the previous table as it was
    and no temporary file behind, and the command fails with one line naming the file."""
    import errno
    import os

    previous = "mode,layout\nmerge,ordered\n"
    (tmp_path / "sweep.csv").write_text(previous)

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    rc = main(["sweep", MODEL, "--checkpoint", biased_checkpoint, "--num-merged", "0", "--modes", "merge",
               "--layouts", "ordered", "--limit", "4", "--batch-size", "4", "--no-throughput",
               "--out", str(tmp_path), "--no-progress", *RUN])
    assert rc != 0
    assert (tmp_path / "sweep.csv").read_text() == previous
    assert not list(tmp_path.glob(".sweep.csv.*"))
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "sweep.csv" in err[-1] and "unchanged" in err[-1]


# ============================================================================================ visualize command
@pytest.mark.slow
def test_visualize_command_digits_and_files(tmp_path, biased_checkpoint, capsys):
    rc = main(["visualize", MODEL, "--checkpoint", biased_checkpoint, "--digits", "2", "-r", "3",
               "--out", str(tmp_path / "digits"), "--device", "cpu"])
    assert rc == 0
    pngs = sorted((tmp_path / "digits").glob("*.png"))
    assert [p.name for p in pngs] == ["digits_000_layer3.png", "digits_001_layer3.png"]
    assert "pred 3" in capsys.readouterr().out  # the biased head's prediction is in the title
    for p in pngs:
        with Image.open(p) as img:
            img.verify()
        with Image.open(p) as img:
            assert img.width >= 500 and img.height >= 300

    photo = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(photo)
    rc = main(["visualize", MODEL, "--images", str(photo), "--layer", "2", "--prune", "-r", "2",
               "--out", str(tmp_path / "files"), "--device", "cpu"])
    assert rc == 0
    assert (tmp_path / "files" / "photo_layer2.png").is_file()


def test_visualize_errors(tmp_path, capsys):
    assert main(["visualize", MODEL, "--images", str(tmp_path / "no.png"), "--device", "cpu"]) == 2
    assert "no.png does not exist" in capsys.readouterr().err
    assert main(["visualize", MODEL, "--digits", "1", "--layer", "4", "--device", "cpu"]) == 2
    assert "--layer must be in" in capsys.readouterr().err
    nan = tmp_path / "nan.pth"
    save_checkpoint({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                     for k, v in create_model(MODEL).state_dict().items()}, nan)
    assert main(["visualize", MODEL, "--checkpoint", str(nan), "--digits", "1", "--device", "cpu",
                 "--out", str(tmp_path / "nan")]) == 2
    assert "outputs are not finite (NaN or inf): checkpoint" in capsys.readouterr().err
    assert not list((tmp_path / "nan").glob("*.png"))


def test_visualize_gives_inputs_of_the_same_name_their_own_pictures(tmp_path):
    from rmeeto.cli.visualize import output_stems

    assert output_stems(["x/cat.jpg", "dog.png"]) == ["cat", "dog"]
    assert output_stems(["val/a/0.jpg", "val/b/0.jpg", "train/a/0.jpg", "val/a/1.jpg"]) == [
        "val_a_0", "b_0", "train_a_0", "1"]
    assert output_stems(["a/0.jpg", "a/0.jpg", "./a/0.jpg"]) == ["0_1", "0_2", "0_3"]  # one file, three times
    for i, folder in enumerate("ab"):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (20, 20), (40 * i, 30, 30)).save(tmp_path / folder / "0.png")
    out = tmp_path / "out"
    assert main(["visualize", MODEL, "--images", str(tmp_path / "a" / "0.png"), str(tmp_path / "b" / "0.png"),
                 "--out", str(out), "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["a_0_layer3.png", "b_0_layer3.png"]


def test_atomic_writes_keep_links_and_refuse_special_files(tmp_path, capsys):
    """A file written through a temporary file and a rename: over a symlink it updates the link's target (the link
    stays), and over what is not a regular file (a FIFO here; as root, /dev/null) it refuses in one line instead of
    replacing it with a plain file."""
    import os

    from rmeeto.checkpoint import save_checkpoint
    from rmeeto.cli import CLIError
    from rmeeto.cli.eval import write_file_atomic

    target = tmp_path / "target.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_file_atomic(link, "new", "--json")
    assert link.is_symlink() and target.read_text() == "new"
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(CLIError, match="not a regular file") as info:
        write_file_atomic(fifo, "x", "--json")
    assert "\n" not in str(info.value)
    with pytest.raises(OSError, match="not a regular file"):
        save_checkpoint({"w": torch.zeros(1)}, fifo)
    assert fifo.is_fifo()


def test_an_os_error_is_one_line_not_a_traceback(tmp_path, capsys, monkeypatch):
    """Any OSError a command meets (here a folder in the way of a file it reads) ends as one line, exit code 1."""
    from rmeeto.cli import main
    import rmeeto.cli.models as cm

    def boom(args):
        raise IsADirectoryError(21, "Is a directory", str(tmp_path))

    monkeypatch.setattr(cm, "run", boom)
    assert main(["models"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"rmeeto models: error: Is a directory: {tmp_path}"


def test_outputs_never_replace_inputs(tmp_path, biased_checkpoint, capsys):
    """An export over the checkpoint it reads, a picture over an input image, --json over the checkpoint: each is
    refused before anything is written, and the input is unchanged."""
    import shutil

    ckpt = tmp_path / "weights.pt2"  # a checkpoint under the export's own suffix
    shutil.copy(biased_checkpoint, ckpt)
    before = ckpt.read_bytes()
    assert main(["export", MODEL, "--checkpoint", str(ckpt), "--out", str(ckpt)]) == 2
    assert "is the input" in capsys.readouterr().err and ckpt.read_bytes() == before
    link = tmp_path / "link.json"
    link.symlink_to(biased_checkpoint)
    data = Path(biased_checkpoint).read_bytes()
    assert main(["eval", MODEL, "--checkpoint", biased_checkpoint, "--json", str(link), "--limit", "4", *RUN]) == 2
    assert "is the input" in capsys.readouterr().err and Path(biased_checkpoint).read_bytes() == data

    pictures = tmp_path / "pictures"
    pictures.mkdir()
    Image.new("RGB", (20, 20), (200, 30, 30)).save(pictures / "x.jpg")
    Image.new("RGB", (20, 20), (30, 200, 30)).save(pictures / "x_layer3.png")
    kept = (pictures / "x_layer3.png").read_bytes()
    assert main(["visualize", MODEL, "--images", str(pictures / "x.jpg"), str(pictures / "x_layer3.png"),
                 "--out", str(pictures), "--device", "cpu"]) == 2
    assert "x_layer3.png is the input" in capsys.readouterr().err
    assert (pictures / "x_layer3.png").read_bytes() == kept and not (pictures / "x_layer3_layer3.png").exists()
    assert main(["visualize", MODEL, "--images", str(pictures / "x.jpg"), "--out", str(pictures / "x.jpg"),
                 "--device", "cpu"]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err


def test_unsupported_devices_and_impossible_training_values_are_one_line(capsys):
    for argv in (["eval", MODEL, "--device", "mps"], ["bench", MODEL, "--device", "meta", "--dtype", "fp32"],
                 ["bench-data", ".", "--device", "xla"]):
        try:
            rc = main(argv)
        except SystemExit as exc:  # refused while parsing
            rc = exc.code
        assert rc == 2
        assert "is not supported: use cpu, cuda or cuda:N" in capsys.readouterr().err
    for flag in ("--smoothing", "--drop-path"):
        with pytest.raises(SystemExit):
            main(["retrain", "--model", MODEL, "--from-scratch", flag, "1"])
        assert f"argument {flag}: expected a number in [0, 1), got '1'" in capsys.readouterr().err


def test_a_clip_list_label_beyond_any_classifier_is_refused_at_once(tmp_path):
    from rmeeto.evaluate import build_eval_dataset
    from rmeeto.video import write_synthetic_clip_folder

    folder = write_synthetic_clip_folder(tmp_path / "clips", num_train=1, num_val=1, num_frames=4, size=16)
    line = (folder / "val.csv").read_text().split()[0]
    (folder / "val.csv").write_text(f"{line} 99999999999999999999999\n")
    with pytest.raises(ValueError, match="has the label 99999999999999999999999, more than any classifier"):
        build_eval_dataset(str(folder), "videomamba_test_patch4_16_f4")


def test_a_checkpoint_of_another_structure_is_named_as_such(tmp_path, capsys):
    """Not as a class-count mismatch, which is what used to be compared first."""
    from rmeeto import create_model

    other = save_checkpoint(create_model("vim_digits_patch4_32", num_classes=2), tmp_path / "digits.pth")
    vit = save_checkpoint(create_model("vit_test_patch4_16"), tmp_path / "vit.pth")
    assert main(["eval", MODEL, "--checkpoint", str(other), "--limit", "4", *RUN]) == 2
    err = capsys.readouterr().err
    assert "does not have vim_test_patch4_16's structure: embed_dim 64 (the model's: 32)" in err
    assert "(it looks like vim_digits_patch4_32)" in err and "class" not in err
    assert main(["sweep", MODEL, "--checkpoint", str(vit), "-r", "0", "--no-throughput", "--limit", "4",
                 "--out", str(tmp_path / "s"), *RUN]) == 2
    assert "holds ViT weights, vim_test_patch4_16 is a Vim (it looks like vit_test_patch4_16)" in capsys.readouterr().err

"""Video models through the CLI and the training loop: eval (one clip, 12 views), retrain, flops, bench,
visualize and sweep on the tiny videomamba_test_patch4_16_f4 with synthetic PyAV clips; clip mixup, the video
preset's optimizer, and the video demo in its quick form."""

from __future__ import annotations

import json

import pytest
import torch

from rmeeto.cli import main
from rmeeto.models import get_config
from rmeeto.video import build_clip_dataset, detect_list_sep, write_synthetic_clip_folder

MODEL = "videomamba_test_patch4_16_f4"  # 4 frames of 16 px, patch 4: 65 tokens, depth 4, 10 classes
RUN = ["--device", "cpu", "--workers", "0"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """A clip folder: 8 training and 4 validation videos of 8 frames, 16 px."""
    return write_synthetic_clip_folder(tmp_path_factory.mktemp("clips"), num_train=8, num_val=4, num_frames=8,
                                       size=16, square=4)


@pytest.fixture(scope="module")
def trained(clips, tmp_path_factory):
    """A checkpoint written by 'rmeeto retrain' from scratch (2 steps), merged r=8 as it trains."""
    out = tmp_path_factory.mktemp("run")
    code = main(["retrain", "--model", MODEL, "--from-scratch", "--data", str(clips), "--epochs", "1", "-b", "4",
                 "--no-train-aug", "-r", "8", "--out", str(out), "--no-progress", *RUN])
    assert code == 0
    return out


def test_clip_folder_lists_and_separator(clips, tmp_path):
    assert detect_list_sep(clips / "train.csv") == " "
    comma = tmp_path / "val.csv"
    comma.write_text("".join(f"{clips / line.rsplit(' ', 1)[0]},{line.rsplit(' ', 1)[1]}\n"
                             for line in (clips / "val.csv").read_text().splitlines()))
    assert detect_list_sep(comma) == ","
    ds = build_clip_dataset(tmp_path, "val", get_config(MODEL).arch)  # absolute paths, comma separated
    clip, label = ds[1]
    assert clip.shape == (3, 4, 16, 16) and label == 1
    test = build_clip_dataset(clips, "test", get_config(MODEL).arch)  # no test.csv: the val list, 12 views
    assert test[0][0].shape == (12, 3, 4, 16, 16)
    with pytest.raises(ValueError, match="video model"):
        build_clip_dataset(clips, "val", get_config("vim_test_patch4_16").arch)


def test_retrain_writes_a_merged_video_checkpoint(trained):
    record = json.loads((trained / "log.jsonl").read_text().splitlines()[-1])
    assert record["epoch"] == 0 and record["skipped_images"] == 0
    # 8 videos, batch 4, repeated_aug 1: 2 steps of 4 clips each
    assert record["images_per_s"] > 0
    assert (trained / "best.pth").is_file()


@pytest.mark.parametrize("repeated_aug", [1, 2])
def test_train_batch_shape_is_the_shape_of_the_clip_batches(clips, repeated_aug):
    """The CUDA graphs are captured for train_batch_shape before any batch exists: with repeated sampling a
    batch of 2 videos holds 2 x repeated_aug clips."""
    from rmeeto.train import TrainConfig
    from rmeeto.train.data import build_data, train_batch_shape
    from rmeeto.train.distributed import Ranks

    config = TrainConfig(model=MODEL, data=str(clips), batch_size=2, workers=0, repeated_aug=repeated_aug,
                         mixup=0.0, cutmix=0.0, alpha=0.0)
    batch = next(iter(build_data(config, Ranks(), torch.device("cpu")).train_loader))
    assert train_batch_shape(config) == tuple(batch[0].shape) == (2 * repeated_aug, 3, 4, 16, 16)


def test_eval_centre_clip_and_twelve_views(clips, trained, tmp_path, capsys):
    ckpt = str(trained / "best.pth")
    assert main(["eval", MODEL, "--checkpoint", ckpt, "--data", str(clips), "--json", str(tmp_path / "a.json"),
                 "--no-progress", *RUN]) == 0
    one = json.loads((tmp_path / "a.json").read_text())
    assert one["n"] == 4 and one["test_views"] is False
    assert one["tokens_per_layer"] == [65, 65, 57, 57]  # stored merge r=8 at layer 2
    assert main(["eval", MODEL, "--checkpoint", ckpt, "--data", str(clips), "--test-views", "--batch-size", "2",
                 "--json", str(tmp_path / "b.json"), *RUN]) == 0
    twelve = json.loads((tmp_path / "b.json").read_text())
    assert twelve["n"] == 4 and twelve["test_views"] is True and twelve["loss"] is None
    assert "x 12 views" in capsys.readouterr().out


def test_eval_test_views_match_evaluate_views(clips, trained):
    """The CLI's 12-view path is evaluate_views: recompute the per-video softmax average by hand."""
    from torch.utils.data import DataLoader

    from rmeeto.evaluate import load_model_for_eval
    from rmeeto.video import collate_clips, evaluate_views

    model = load_model_for_eval(MODEL, str(trained / "best.pth"))
    ds = build_clip_dataset(clips, "test", get_config(MODEL).arch)
    stats = evaluate_views(model, DataLoader(ds, batch_size=3, collate_fn=collate_clips))
    hits = 0
    with torch.no_grad():
        for views, label in (ds[i] for i in range(len(ds))):
            hits += int(model(views).softmax(-1).mean(0).argmax() == label)
    assert stats["n"] == 4 and stats["top1"] == pytest.approx(100.0 * hits / 4)


def test_eval_rejects_image_data_and_image_flags(clips, capsys):
    assert main(["eval", MODEL, *RUN]) == 2  # default --data digits is not a clip folder
    assert "clip data folder digits does not exist" in capsys.readouterr().err
    assert main(["eval", "vim_test_patch4_16", "--test-views", *RUN]) == 2
    assert "12-view video test" in capsys.readouterr().err


def test_flops_and_bench_on_a_video_model(capsys):
    assert main(["flops", "videomamba_small_patch16_224_f8", "--preset", "paper", "--json"]) == 0
    rows = {r["setting"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    assert round(rows["unmerged"]["paper_gflops"], 2) == 40.43 and rows["unmerged"]["final_tokens"] == 1569
    assert round(rows["merged"]["paper_gflops"], 2) == 30.99 and rows["merged"]["final_tokens"] == 601
    assert main(["bench", MODEL, "--device", "cpu", "--dtype", "fp32", "-r", "8", "--batch-size", "2",
                 "--warmup", "1", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert MODEL in out and "r=8" in out


def test_bench_builds_clip_inputs():
    from rmeeto.bench import bench_inference

    row = bench_inference(MODEL, None, batch_size=2, dtype="fp32", device="cpu", warmup=1, repeats=1)
    assert row["img_size"] == 16 and row["images_per_s"] > 0


def test_visualize_draws_a_frame_grid_per_clip(clips, trained, tmp_path, capsys):
    out = tmp_path / "vis"
    assert main(["visualize", MODEL, "--checkpoint", str(trained / "best.pth"), "--clips", "2", "--data",
                 str(clips), "--out", str(out), "--device", "cpu"]) == 0
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["video_0000_layer3.png", "video_0001_layer3.png"]
    from PIL import Image

    with Image.open(pngs[0]) as img:
        assert img.size == (4 * 240, 2 * 240 + 70)  # 4 frame columns of 2.4 in at 100 dpi, 2 rows + title
    assert main(["visualize", MODEL, "--digits", "2"]) == 2
    assert "video model: give --clips N --data DIR" in capsys.readouterr().err


def test_sweep_on_clips(clips, tmp_path):
    import csv

    assert main(["sweep", MODEL, "--data", str(clips), "--num-merged", "0,8", "--modes", "merge", "--layouts",
                 "ordered", "--no-throughput", "--out", str(tmp_path), "--no-progress", *RUN]) == 0
    rows = list(csv.DictReader(open(tmp_path / "sweep.csv")))
    assert [int(r["tokens"]) for r in rows] == [65, 57] and all(int(r["n"]) == 4 for r in rows)


def test_clip_mixup_cuts_one_box_through_all_frames():
    from timm.data import Mixup

    from rmeeto.train.data import ClipMixup

    torch.manual_seed(0)
    mixup = ClipMixup(Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0, num_classes=4))
    x = torch.stack([torch.zeros(3, 4, 16, 16), torch.ones(3, 4, 16, 16)])
    mixed, target = mixup(x.clone(), torch.tensor([0, 1]))
    assert mixed.shape == x.shape and target.shape == (2, 4)
    cut = mixed[0] == 1  # where clip 0 took clip 1's pixels
    assert cut.any() and not cut.all()
    assert torch.equal(cut, cut[:1, :1].expand_as(cut))  # the same box in every channel and frame


def test_video_preset_and_optimizer_groups(clips):
    from rmeeto.train import TrainConfig
    from rmeeto.train.distributed import Ranks
    from rmeeto.train.setup import Run, _optimizer

    cfg = TrainConfig.paper("videomamba_tiny_patch16_224_f8", checkpoint="x.pth")
    assert (cfg.alpha, cfg.weight_decay, cfg.layer_decay, cfg.repeated_aug, cfg.epochs) == (0.0, 0.1, 0.75, 2, 30)
    assert (cfg.warmup_epochs, cfg.warmup_lr, cfg.min_lr, cfg.auto_augment) == (5.0, 2e-6, 2e-6,
                                                                                "rand-m5-n2-mstd0.25-inc1")
    assert TrainConfig.paper("videomamba_small_patch16_224", checkpoint="x.pth").alpha == 0.5  # image: Vim recipe

    from rmeeto.models import create_model

    small = TrainConfig(model=MODEL, data=str(clips), alpha=0.0, batch_size=4, accum_steps=2, repeated_aug=2,
                        lr=4e-5, weight_decay=0.1, layer_decay=0.5)
    model = create_model(MODEL)
    run = Run(small, Ranks(), torch.device("cpu"), torch.float32, None)
    opt = _optimizer(run, model)
    # 4 videos x 2 clips x 2 accumulation = 16 clips per step: lr 4e-5 * 16 / 512
    assert opt.defaults["lr"] == pytest.approx(4e-5 * 16 / 512)
    names = {id(p): n for n, p in model.named_parameters()}
    by_name = {names[id(p)]: g for g in opt.param_groups for p in g["params"]}
    assert by_name["pos_embed"]["lr_scale"] == pytest.approx(0.5 ** 5) and by_name["pos_embed"]["weight_decay"] == 0
    assert by_name["patch_embed.proj.weight"]["lr_scale"] == pytest.approx(0.5 ** 5)
    assert by_name["temporal_pos_embedding"]["lr_scale"] == 1.0
    assert by_name["temporal_pos_embedding"]["weight_decay"] == 0
    a_log = next(n for n in by_name if n.endswith("A_log"))
    assert by_name[a_log]["weight_decay"] == 0.1  # decayed, as the official video recipe
    assert by_name["head.weight"]["lr_scale"] == 1.0 and by_name["head.weight"]["weight_decay"] == 0.1


def test_video_demo_quick(tmp_path):
    from rmeeto.demo import format_table
    from rmeeto.demo_video import VideoDemoSettings, run_video_demo

    settings = VideoDemoSettings.quick(num_train=8, num_val=4, batch_size=4, throughput_batch=2)
    report = run_video_demo(tmp_path, settings, progress=False)
    assert set(report["stages"]) == {"teacher", "merged (training-free)", "pruned (training-free)",
                                     "merged + re-trained"}
    assert report["stages"]["teacher"]["final_tokens"] == 65
    assert report["stages"]["merged (training-free)"]["final_tokens"] == 49
    assert report["stages"]["merged (training-free)"]["true_gflops"] < report["stages"]["teacher"]["true_gflops"]
    for name in ("report.md", "report.json", "demo.png", "teacher/best.pth", "retrain/best.pth"):
        assert (tmp_path / name).is_file()
    assert "synthetic video demo" in (tmp_path / "report.md").read_text()
    assert "re-training top-1 per epoch" in format_table(report)


class _FixedViews(torch.nn.Module):
    """'Clips' [n, 3, T, H, W] whose first value is a class index: logits one-hot at that class."""

    def forward(self, x):
        return torch.nn.functional.one_hot(x[:, 0, 0, 0, 0].long(), 4).float()


def _views_rank(rank: int, init_file: str, results: str):
    import torch.distributed as dist

    from rmeeto.video import evaluate_views

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        labels = torch.tensor([0, 1, 2, 3, 0, 1])
        views = torch.zeros(6, 2, 3, 1, 1, 1)
        views[:, :, 0, 0, 0, 0] = torch.tensor([0, 1, 2, 0, 3, 3]).view(6, 1).float()  # videos 0, 1, 2 right
        mine = slice(rank, None, 2)  # rank 0: videos 0, 2, 4 (2 right); rank 1: 1, 3, 5 (1 right)
        stats = evaluate_views(_FixedViews(), [(views[mine], labels[mine])])
        with open(f"{results}.{rank}", "w") as f:
            json.dump(stats, f)
    finally:
        dist.destroy_process_group()


def test_evaluate_views_sums_over_ranks(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_views_rank, args=(str(tmp_path / "init"), str(tmp_path / "stats")), nprocs=2)
    for rank in range(2):
        stats = json.loads((tmp_path / f"stats.{rank}").read_text())
        assert stats["n"] == 6 and stats["top1"] == pytest.approx(50.0)  # 3 of 6 over both ranks

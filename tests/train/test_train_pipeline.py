"""The training loop's input pipeline choice: ``--pipeline gpu`` (rmeeto.gpu_data's batched decode and
augmentation, here on CPU tensors) drives real training steps, and ``auto`` keeps the CPU pipeline on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rmeeto import gpu_data
from rmeeto.train import TrainConfig, TrainError
from rmeeto.train.data import build_data
from rmeeto.train.distributed import Ranks

from _train_common import MODEL, write_image_tree


def _jpeg_folder(root: Path, per_class: int = 10) -> Path:
    """train/ and val/ with 2 classes of small JPEGs, plus the odd files the pipelines must cope with: a
    grayscale JPEG, a CMYK JPEG, an RGBA PNG (decoded, kept) and a truncated-to-nothing JPEG (skipped)."""
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    # varied sizes: the device batch is a list
    write_image_tree(root, gen, per_class, ".jpg", size=lambda i: (20 + 3 * (i % 4), 24 + 2 * (i % 5)), quality=90)
    odd = root / "train" / "a"
    grey = (torch.rand(22, 22, generator=gen) * 255).to(torch.uint8).numpy()
    Image.fromarray(grey, mode="L").save(odd / "grey.jpg")
    Image.new("CMYK", (21, 23), (10, 200, 30, 40)).save(odd / "cmyk.jpg")
    Image.new("RGBA", (25, 19), (200, 10, 30, 100)).save(odd / "rgba.png")
    (odd / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


def test_retrain_with_the_gpu_pipeline_on_cpu_tensors(tmp_path, monkeypatch):
    from rmeeto.cli import main

    data, out = _jpeg_folder(tmp_path / "data"), tmp_path / "out"
    batches = []
    transform = gpu_data.GpuTrainTransform.__call__

    def spy(self, batch):  # records the device pipeline's training batches
        result = transform(self, batch)
        batches.append(None if result is None else (tuple(result[0].shape), result[0].device.type))
        return result

    monkeypatch.setattr(gpu_data.GpuTrainTransform, "__call__", spy)
    # odd batch (5) with mixup: a skipped file leaves an odd batch the loop must trim before mixing
    code = main(["retrain", "--model", MODEL, "--from-scratch", "--data", str(data), "--pipeline", "gpu",
                 "--device", "cpu", "--epochs", "2", "-b", "6", "--mixup", "0.8", "--cutmix", "1.0",
                 "--aa", "rand-m9-mstd0.5-inc1", "--reprob", "0.25", "-j", "0", "--no-progress", "--out", str(out)])
    assert code == 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(records) == 2
    assert all(r["skipped_images"] == 1 for r in records)  # broken.jpg, counted once per epoch, no crash
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in records)
    steps_per_epoch = 24 // 6
    assert len(batches) == 2 * steps_per_epoch
    assert {shape[1:] for shape, _ in batches} == {(3, 16, 16)}
    assert {device for _, device in batches} == {"cpu"}
    # 24 images and one unreadable: every epoch, one batch is 5 images (then trimmed to 4 for mixup)
    assert sorted(shape[0] for shape, _ in batches[:steps_per_epoch]) == [5, 6, 6, 6]


def test_gpu_pipeline_runs_are_deterministic_under_a_seed(tmp_path):
    from rmeeto.train import train

    data = _jpeg_folder(tmp_path / "data")
    cfg = TrainConfig(model=MODEL, data=str(data), pipeline="gpu", device="cpu", epochs=1, batch_size=8,
                      alpha=0.0, lr=1e-3, auto_augment="rand-m9-mstd0.5-inc1", reprob=0.25, workers=0,
                      progress=False)
    first, second = train(cfg), train(cfg)
    assert first.final["train_loss"] == second.final["train_loss"]
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(),
                                                  second.model.state_dict().values()))


def test_auto_picks_the_cpu_pipeline_on_cpu_and_gpu_is_forced(tmp_path):
    data = _jpeg_folder(tmp_path / "data", per_class=4)
    cpu = torch.device("cpu")
    auto = build_data(TrainConfig(model=MODEL, data=str(data), alpha=0.0, batch_size=4, workers=0), Ranks(), cpu)
    assert auto.pipeline == "cpu" and not isinstance(auto.train_loader, gpu_data.DeviceLoader)
    forced = build_data(TrainConfig(model=MODEL, data=str(data), alpha=0.0, batch_size=4, workers=0,
                                    pipeline="gpu"), Ranks(), cpu)
    assert forced.pipeline == "gpu"
    assert isinstance(forced.train_loader, gpu_data.DeviceLoader)
    assert isinstance(forced.val_loader, gpu_data.DeviceLoader)
    assert isinstance(forced.val_loader.transform, gpu_data.GpuEvalTransform)
    images, labels = next(iter(forced.val_loader))
    assert images.shape == (8, 3, 16, 16) and labels.tolist() == [0] * 4 + [1] * 4
    digits = build_data(TrainConfig(model=MODEL, alpha=0.0, batch_size=64, workers=0), Ranks(), cpu)
    assert digits.pipeline == "cpu"


def test_bad_pipeline_choices_fail_clearly():
    with pytest.raises(ValueError, match="pipeline='tpu' is not valid"):
        TrainConfig(model=MODEL, alpha=0.0, pipeline="tpu")
    with pytest.raises(TrainError, match="built-in tensor dataset"):
        build_data(TrainConfig(model=MODEL, alpha=0.0, pipeline="gpu", workers=0), Ranks(), torch.device("cpu"))


def test_bench_data_command_and_bench_data_flag(tmp_path, capsys, monkeypatch):
    from rmeeto import bench_data
    from rmeeto.cli import main

    data = _jpeg_folder(tmp_path / "data", per_class=4) / "train"
    out = tmp_path / "rows.json"
    code = main(["bench-data", str(data), "--device", "cpu-gpu-path", "--batch-size", "4", "--batches", "1",
                 "--warmup", "0", "--workers", "0", "--img-size", "16", "--json", str(out)])
    assert code == 0
    rows = json.loads(out.read_text())
    assert [r["pipeline"] for r in rows] == ["cpu", "gpu"]  # CPU workers row(s), then the batched path
    assert all(r["images"] == 4 and r["images_per_s"] > 0 for r in rows)

    seen = {}
    monkeypatch.setattr(bench_data, "run_from_args", lambda args: seen.update(vars(args)) or rows)
    assert main(["bench", "--data", str(data), "--batch-size", "8", "--device", "cpu"]) == 0
    assert (seen["folder"], seen["batch_size"], seen["device"]) == (str(data), 8, "cpu")
    assert "images/s" in capsys.readouterr().out
    assert main(["bench", "vim_test_patch4_16", "--data", str(data)]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["bench"]) == 2
    assert "--data DIR" in capsys.readouterr().err


def test_pipeline_is_a_runtime_field_free_on_resume_and_old_checkpoints_load():
    from pathlib import Path as _Path

    from rmeeto.train.state import resumed_config

    saved = TrainConfig(model=MODEL, alpha=0.0, lr=1e-3, pipeline="cpu")
    messages = []
    resumed = resumed_config(TrainConfig(model=MODEL, alpha=0.0, lr=5e-3, pipeline="gpu", ddp_graphs=False),
                             {"config": saved.to_dict()}, _Path("last.pth"), messages.append)
    assert (resumed.pipeline, resumed.ddp_graphs, resumed.lr) == ("gpu", False, 1e-3)  # lr is not runtime
    assert messages and "lr" in messages[0] and "pipeline" not in messages[0]
    old = {k: v for k, v in saved.to_dict().items() if k not in ("pipeline", "ddp_graphs")}  # written before them
    assert TrainConfig.from_dict(old).pipeline == "auto"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_forced_gpu_pipeline_on_cuda_trains(tmp_path):
    from rmeeto.train import train

    data = _jpeg_folder(tmp_path / "data")
    cfg = TrainConfig(model=MODEL, data=str(data), device="cuda", epochs=1, batch_size=8, alpha=0.0, lr=1e-3,
                      mixup=0.8, cutmix=1.0, auto_augment="rand-m9-mstd0.5-inc1", reprob=0.25, workers=2,
                      progress=False, pipeline="gpu")
    built = build_data(cfg, Ranks(), torch.device("cuda"))
    assert built.pipeline == "gpu"
    images, labels = next(iter(built.train_loader))
    assert images.is_cuda and labels.is_cuda and images.shape[1:] == (3, 16, 16)
    result = train(cfg)
    assert result.final["skipped_images"] == 1
    assert torch.isfinite(torch.tensor(result.final["train_loss"]))


def test_a_batch_left_empty_by_the_mixup_trim_is_skipped_not_a_nan_loss():
    """A batch with one readable image (the others unreadable) under mixup: the odd-batch trim leaves zero
    images, and a mean loss over nothing is NaN, which used to stop the whole run as a non-finite loss (on every
    rank, since the loss is averaged). Such a batch is skipped like one with no readable image."""
    from types import SimpleNamespace

    from timm.data import Mixup
    from timm.loss import SoftTargetCrossEntropy

    from rmeeto.data import Batch
    from rmeeto.train.engine import _forward
    from rmeeto.train.loss import DistillationLoss

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5))
    parts = SimpleNamespace(mixup=Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, num_classes=5), step_model=model,
                            teacher=None, criterion=DistillationLoss(SoftTargetCrossEntropy(), alpha=0.0))
    run = SimpleNamespace(device=torch.device("cpu"), ranks=Ranks(), amp_dtype=torch.float32)
    one = Batch(torch.rand(1, 3, 4, 4), torch.tensor([2]))
    assert _forward(run, parts, one, last_micro=True, poison=False) == (None, 0)
    loss, n = _forward(run, parts, Batch(torch.rand(3, 3, 4, 4), torch.tensor([0, 1, 2])), True, False)
    assert n == 2 and torch.isfinite(loss)


@pytest.mark.slow
def test_gpu_pipeline_under_two_process_ddp_on_cpu(tmp_path):
    """The batched pipeline (on CPU tensors) in a 2-process gloo job with mixup and a corrupt file: both ranks
    finish with a finite loss, and the corrupt file is counted once summed over the ranks (one shard holds it)."""
    import os
    import subprocess
    import sys

    data, out = _jpeg_folder(tmp_path / "data"), tmp_path / "out"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2] / "src") + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "rmeeto",
           "retrain", "--model", MODEL, "--from-scratch", "--data", str(data), "--pipeline", "gpu", "--device", "cpu",
           "--epochs", "1", "-b", "4", "--mixup", "0.8", "--cutmix", "1.0", "--reprob", "0.25", "-j", "0",
           "--no-progress", "--out", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    record = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()][-1]
    assert torch.isfinite(torch.tensor(record["train_loss"]))
    assert record["skipped_images"] == 1  # broken.jpg sits in exactly one rank's shard

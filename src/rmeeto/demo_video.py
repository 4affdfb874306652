"""The R-MeeTo story on video, in a few CPU minutes: synthetic moving-square clips, a tiny VideoMamba.

    rmeeto demo --task video --out out/demo_video   # or: from rmeeto.demo_video import run_video_demo

1. write synthetic clips with PyAV (:func:`rmeeto.video.write_synthetic_clip_folder`): a square moving right,
   left, down or up; the direction is the label, so a model must read the frames in order (reversing time
   swaps the classes);
2. train ``videomamba_demo_patch4_16_f8`` (8 frames of 16 px in tubelets of 2 frames, patch 4, 65 tokens,
   width 32, depth 4, 4 classes) from scratch through :func:`rmeeto.train.train`, the loop used for Kinetics
   re-training;
3. merge tokens training-free over the flattened space-time tokens (as the official video method) and, for
   contrast, prune the same tokens;
4. re-train the merged model with distillation from the unmerged one;
5. write ``report.md``, ``report.json`` and ``demo.png`` (the image demo's format) into the output folder.

Training augmentation is off (``train_aug=False``: full-frame crops, no flip, RandAugment or erasing): a
horizontal flip would turn "right" into "left" without changing the label.

Why these settings (the first version, tubelet 1 with 4 frames sampled from 8 and a 4 px square, stayed near
40% top-1: its tokens each see one frame, and a width-32 depth-4 Mamba learns to relate square positions 16
tokens apart only slowly from 192 clips): tubelets of 2 frames make the motion visible inside single tokens;
9-frame clips give the 8 sampled frames one step of motion each in validation (frames 0..7); a 6 px
square covers 4 to 9 of the 16 patches of a frame, so a large share of the 64 patch tokens carry it and
merging 16 of them at layer 2 cannot take only uniform background. Measured with these defaults (2 CPU cores,
100 s, 2026-11-30; docs/demo_video_report.md): teacher 100.0%, merged training-free 75.0%, pruned 73.4%,
merged + 2 epochs of re-training 89.8% on 128 validation clips.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from rmeeto.demo import _layout_md, _measure, _MergePruneSettings, _report, _stage, _training_free_stages, _write_report
from rmeeto.models import get_config

__all__ = ["VideoDemoSettings", "run_video_demo", "VIDEO_MODEL"]

VIDEO_MODEL = "videomamba_demo_patch4_16_f8"


@dataclass(frozen=True)
class VideoDemoSettings(_MergePruneSettings):
    """Knobs of the video demo (defaults: a few minutes on 2 CPU cores; :meth:`quick` is a smoke test whose
    numbers mean nothing). Clips are ``clip_frames`` frames of ``clip_size`` px with a ``square`` px square
    moving 1 px per frame (the model samples 8 frames, one per segment)."""

    num_train: int = 512
    num_val: int = 128
    clip_frames: int = 9  # 8 segments of one frame: validation samples frames 0..7, one step apart
    clip_size: int = 16
    square: int = 6  # covers 4-9 of a frame's 16 patches (see the module docstring)
    teacher_epochs: int = 10
    retrain_epochs: int = 2
    batch_size: int = 16
    teacher_lr: float = 1.6e-1  # per 512 clips: 5e-3 at batch 16
    retrain_lr: float = 3.2e-2  # per 512 clips: 1e-3 at batch 16
    num_merged: int = 16  # tokens merged at layer 2 (the only even layer > 0 of 4): 65 -> 49
    alpha: float = 0.5
    seed: int = 0
    throughput_batch: int = 32

    def __post_init__(self):
        for name in ("num_train", "num_val", "teacher_epochs", "retrain_epochs", "batch_size", "throughput_batch",
                     "num_merged"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.clip_size < 2 or self.clip_size % 2:
            raise ValueError(f"clip_size must be even and >= 2 (yuv420p video), got {self.clip_size}")
        if not 1 <= self.square < self.clip_size:
            raise ValueError(f"square must be in 1..{self.clip_size - 1} (clip_size {self.clip_size}), "
                             f"got {self.square}")
        if self.clip_size - self.square < self.clip_frames - 1:
            raise ValueError(f"a {self.square} px square cannot move {self.clip_frames - 1} px (clip_frames "
                             f"{self.clip_frames}) in a {self.clip_size} px frame: lower clip_frames or square")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")

    @classmethod
    def quick(cls, **overrides) -> "VideoDemoSettings":
        return cls(**{**dict(num_train=32, num_val=16, teacher_epochs=1, retrain_epochs=1, batch_size=8,
                             throughput_batch=8), **overrides})


def _report_md(report: dict) -> str:
    s = report["settings"]
    arch = get_config(VIDEO_MODEL).arch
    merged = report["stages"]["merged (training-free)"]
    intro = (
        f"Model `{VIDEO_MODEL}` ({arch.num_frames} frames of {arch.img_size} px in tubelets of "
        f"{arch.tubelet_size} frames, {arch.num_tokens} tokens: {arch.num_patches} space-time patches + the class "
        f"token first). Data: synthetic PyAV-encoded clips of a {s['square']} px square moving 1 px per frame "
        f"right/left/down/up (the label; time order matters), {s['num_train']} training and "
        f"{report['val_images']} validation videos of {s['clip_frames']} frames, one centre clip each. Merging: "
        f"{s['num_merged']} tokens at each of layers {', '.join(map(str, report['merging_layers']))} over the "
        f"flattened space-time tokens ({report['tokens_per_layer_merged'][0]} -> {merged['final_tokens']} "
        f"tokens). Teacher trained from scratch for {s['teacher_epochs']} epochs; re-training "
        f"{s['retrain_epochs']} epochs with alpha={s['alpha']}.")
    return _layout_md(report, "R-MeeTo on the synthetic video demo", intro, "clip", 5,
                      f"a few hundred synthetic clips, a {arch.depth}-layer width-{arch.embed_dim} model, a few "
                      "CPU minutes",
                      "Clips: `data/`. Checkpoints: `teacher/best.pth`, `retrain/best.pth`.", [])


def run_video_demo(out: str | os.PathLike = "out/demo_video", settings: Optional[VideoDemoSettings] = None,
                   progress: bool = True) -> dict:
    """Run the five steps (module docstring) and write the report into ``out``. Returns the report dict (the
    keys of :func:`rmeeto.demo.run_demo`'s, so :func:`rmeeto.demo.format_table` prints it)."""
    from torch.utils.data import DataLoader

    from rmeeto.train import TrainConfig, train
    from rmeeto.video import build_clip_dataset, collate_clips, write_synthetic_clip_folder

    settings = settings or VideoDemoSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cfg = get_config(VIDEO_MODEL)

    _stage(f"[1/5] writing {settings.num_train} + {settings.num_val} synthetic clips with PyAV")
    data = write_synthetic_clip_folder(out / "data", settings.num_train, settings.num_val, settings.clip_frames,
                                       settings.clip_size, settings.square, settings.seed)
    data_seconds = time.perf_counter() - t0
    val_set = build_clip_dataset(data, "val", cfg.arch, mean=cfg.mean, std=cfg.std)
    val_loader = DataLoader(val_set, batch_size=64, collate_fn=collate_clips)
    common = dict(model=VIDEO_MODEL, data=str(data), batch_size=settings.batch_size, seed=settings.seed, workers=0,
                  device="cpu", amp="fp32", progress=progress, warmup_lr=1e-5, train_aug=False, min_lr=1e-5,
                  weight_decay=0.05, drop_path=0.0, smoothing=0.1)

    _stage(f"[2/5] training the teacher from scratch ({settings.teacher_epochs} epochs)")
    t = time.perf_counter()
    teacher_run = train(TrainConfig(**common, epochs=settings.teacher_epochs, lr=settings.teacher_lr,
                                    warmup_epochs=min(0.5, settings.teacher_epochs / 2), alpha=0.0,
                                    out=str(out / "teacher")))
    if teacher_run.status != "finished":
        raise KeyboardInterrupt  # stopped by a signal: train() saved teacher/last.pth
    teacher_seconds = time.perf_counter() - t
    teacher_ckpt = str(out / "teacher" / "best.pth")

    _stage(f"[3/5] evaluating the teacher; training-free merging / pruning {settings.num_merged} tokens")
    stages = _training_free_stages(VIDEO_MODEL, teacher_ckpt, val_loader, settings, progress)

    _stage(f"[4/5] re-training the merged model with distillation ({settings.retrain_epochs} epochs)")
    t = time.perf_counter()
    retrain_run = train(TrainConfig(**common, checkpoint=teacher_ckpt, merge=settings.merge,
                                    epochs=settings.retrain_epochs, lr=settings.retrain_lr, alpha=settings.alpha,
                                    out=str(out / "retrain")))
    if retrain_run.status != "finished":
        raise KeyboardInterrupt
    retrain_seconds = time.perf_counter() - t
    stages["merged + re-trained"] = _measure(retrain_run.model, val_loader, settings.merge, settings, progress,
                                             "re-trained", VIDEO_MODEL)

    _stage("[5/5] writing the report")
    report: dict[str, Any] = {"task": "video", **_report(
        VIDEO_MODEL, settings, len(val_set), stages, teacher_run, retrain_run,
        {"data": data_seconds, "teacher": teacher_seconds, "retrain": retrain_seconds})}
    report["wall_seconds"] = time.perf_counter() - t0
    _write_report(out, report, _report_md)
    return report

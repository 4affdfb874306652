"""Building a run: its settings (fresh or from the resume checkpoint), device and precision, the student,
teacher and EMA, the optimizer and learning-rate schedule, and what the step calls. Each builder is called
once by :func:`rmeeto.train.train`, in the order that function reads."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from rmeeto.merge import apply_merge
from rmeeto.models import create_model
from rmeeto.runtime import resolve_device, resolve_dtype
from rmeeto.train.config import TrainConfig, TrainError
from rmeeto.train.data import build_mixup, clips_per_video, train_batch_shape
from rmeeto.train.distributed import Ranks
from rmeeto.train.graphs import StudentGraph, TeacherForward, train_graph_enabled
from rmeeto.train.loss import DistillationLoss, build_criterion
from rmeeto.train.state import find_resume_checkpoint, load_weights, read_resume, resumed_config

__all__ = ["Run", "Training", "prepare_run", "build_models", "build_training", "step_model"]


@dataclass(frozen=True)
class Run:
    """The fixed context of a run: its settings (a resumed run's stored ones), processes, device and the
    autocast dtype (float32 = autocast off), and the output folder (None = write nothing)."""

    config: TrainConfig
    ranks: Ranks
    device: torch.device
    amp_dtype: torch.dtype
    out: Optional[Path]


@dataclass
class Training:
    """The objects one training step uses. ``model`` is the bare student (its weights are what is saved,
    evaluated and averaged into ``ema``); ``step_model`` is what the step calls: the student itself, its
    :class:`StudentGraph` or its DDP wrapper (set by :func:`step_model` after a resume has loaded weights)."""

    model: nn.Module
    teacher: Optional[TeacherForward]
    ema: Any  # timm ModelEmaV3 or None
    criterion: DistillationLoss
    optimizer: torch.optim.Optimizer
    scheduler: Any  # timm CosineLRScheduler, stepped per optimizer step
    scaler: torch.amp.GradScaler
    mixup: Optional[Callable]
    step_model: Optional[nn.Module] = None


def check_out_spares_inputs(config: TrainConfig) -> None:
    """TrainError if the run's ``last.pth`` / ``best.pth`` would overwrite its input checkpoint or teacher (checked
    first, before the run folder is claimed, so this is the message a user sees)."""
    if config.out is None:
        return
    out = Path(config.out)
    inputs = {Path(p).resolve() for p in (config.checkpoint, config.teacher) if p}
    for name in ("last.pth", "best.pth"):
        if (out / name).resolve() in inputs:
            raise TrainError(f"--out would overwrite the input checkpoint {out / name}; choose another folder")


def prepare_run(config: TrainConfig, resume: Optional[str], ranks: Ranks,
                log: Callable[[str], None]) -> tuple[Run, Optional[dict], Optional[Path]]:
    """Settings, device and output folder of the run -> (run, resume checkpoint or None, its path). A resumed
    run takes its settings from the checkpoint. Raises TrainError for bad input, before any work."""
    resume_path = find_resume_checkpoint(resume, config.out)
    ckpt = read_resume(resume_path) if resume_path is not None else None
    if ckpt is not None:
        config = resumed_config(config, ckpt, resume_path, log)
    try:
        device = resolve_device(config.device, ranks.local_rank if ranks.distributed else None)
        amp_dtype = resolve_dtype(config.amp, device)
    except ValueError as exc:
        raise TrainError(f"--device {config.device} / --amp {config.amp}: {exc}") from None
    check_out_spares_inputs(config)
    out = Path(config.out) if config.out is not None else None
    return Run(config, ranks, device, amp_dtype, out), ckpt, resume_path


def weights_finite(model: nn.Module) -> bool:
    """Whether every floating-point parameter of ``model`` is finite (one fused norm per parameter, one sync)."""
    norms = torch._foreach_norm([p.detach() for p in model.parameters() if p.is_floating_point()])
    return not norms or bool(torch.isfinite(torch.stack(norms)).all())


def _check_finite(model: nn.Module, what: str) -> None:
    """TrainError naming ``what`` when loaded weights hold NaN or inf: the first step's loss would be NaN, and the
    error would then name no cause."""
    if not weights_finite(model):
        raise TrainError(f"{what}: its weights hold NaN or inf (diverged or corrupt); nothing trained")


def build_models(run: Run, resuming: bool) -> tuple[nn.Module, Optional[TeacherForward], Any]:
    """(student, teacher, ema). The student starts from ``config.checkpoint`` (unless ``resuming``: the resume
    checkpoint's weights come later) and merges as ``config.merge`` says; the teacher is the unmerged model,
    frozen, in eval mode (None when ``alpha`` is 0)."""
    config = run.config
    width = {} if config.num_classes is None else {"num_classes": config.num_classes}
    model = create_model(config.model, drop_path_rate=config.drop_path, **width)
    if config.checkpoint is not None and not resuming:
        load_weights(model, config.checkpoint, config.use_ema_weights, "--checkpoint")
        _check_finite(model, f"--checkpoint {config.checkpoint}")
    apply_merge(model, config.merge)
    teacher = None
    if config.alpha > 0:
        teacher = create_model(config.model, **width)
        source = config.teacher or config.checkpoint
        loaded = load_weights(teacher, source, config.use_ema_weights and not config.teacher, "teacher")
        if loaded.head_reset:  # a re-initialised head would distil random targets into the student
            from rmeeto.evaluate import checkpoint_num_classes

            has = checkpoint_num_classes(source, config.use_ema_weights and not config.teacher)
            raise TrainError(f"teacher {source}: its {has}-class classifier does not fit the {teacher.num_classes}-"
                             f"class model being trained; if the data has {has} classes, give --num-classes {has}; "
                             "else a --teacher trained on this data, or --alpha 0 to train without distillation")
        _check_finite(teacher, f"teacher {source}")
        teacher = TeacherForward(teacher.eval().requires_grad_(False).to(run.device), run.amp_dtype,
                                 graph=config.cuda_graphs)
    model.to(run.device)
    ema = None
    if config.ema:
        from timm.utils import ModelEmaV3  # timm is imported only to train

        ema = ModelEmaV3(model, decay=config.ema_decay)
    return model, teacher, ema


def _layer_decay_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    """Parameter groups for ``layer_decay``, as the official VideoMamba fine-tuning runs it: the per-block
    branch of its layer assignment is commented out, so only ``cls_token``, ``pos_embed`` and ``patch_embed.*``
    (layer 0) get ``lr_scale = layer_decay ** (depth + 1)``; everything else keeps 1. Weight-decay exemption
    as :func:`timm.optim.param_groups_weight_decay` (1-D, biases, ``model.no_weight_decay()``) when
    ``wd_exempt``. timm's scheduler multiplies each group's lr by its ``lr_scale``."""
    skip = model.no_weight_decay() if config.wd_exempt else set()
    embed_scale = config.layer_decay ** (len(model.layers) + 1)
    groups: dict[tuple[bool, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = config.wd_exempt and (p.ndim <= 1 or name.endswith(".bias") or name in skip)
        embed = name in ("cls_token", "pos_embed") or name.startswith("patch_embed.")
        group = groups.setdefault((no_decay, embed), {
            "params": [], "weight_decay": 0.0 if no_decay else config.weight_decay,
            "lr_scale": embed_scale if embed else 1.0})
        group["params"].append(p)
    return [groups[key] for key in sorted(groups)]


def _optimizer(run: Run, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW at the base lr scaled by the global batch (per 512 samples: images, or clips counting each of a
    video's ``repeated_aug`` clips), decay exempting 1-D params, biases and ``model.no_weight_decay()`` when
    ``wd_exempt``; with ``layer_decay`` see :func:`_layer_decay_groups`."""
    config = run.config
    samples = config.batch_size * clips_per_video(config) * config.accum_steps * run.ranks.world
    scaled_lr = config.lr * samples / 512.0
    if config.layer_decay is not None:
        params = _layer_decay_groups(model, config)
    elif config.wd_exempt:
        from timm.optim import param_groups_weight_decay

        params = param_groups_weight_decay(model, config.weight_decay, no_weight_decay_list=model.no_weight_decay())
    else:
        params = [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": config.weight_decay}]
    return torch.optim.AdamW(params, lr=scaled_lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=config.weight_decay,
                             fused=run.device.type == "cuda")


def build_training(run: Run, model: nn.Module, teacher: Optional[TeacherForward], ema: Any,
                   steps_per_epoch: int) -> Training:
    """Optimizer, per-step cosine schedule (linear warmup from ``warmup_lr``), GradScaler (enabled for fp16
    only), loss and mixup around the built models."""
    from timm.scheduler import CosineLRScheduler

    config = run.config
    optimizer = _optimizer(run, model)
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = min(int(round(config.warmup_epochs * steps_per_epoch)), total_steps - 1)
    scheduler = CosineLRScheduler(
        optimizer, t_initial=max(1, total_steps - warmup_steps), lr_min=config.min_lr, warmup_t=warmup_steps,
        warmup_lr_init=config.warmup_lr, warmup_prefix=True, t_in_epochs=False,
    )
    scaler = torch.amp.GradScaler(run.device.type, enabled=run.amp_dtype == torch.float16)
    return Training(model=model, teacher=teacher, ema=ema, criterion=build_criterion(config), optimizer=optimizer,
                    scheduler=scheduler, scaler=scaler, mixup=build_mixup(config, model.num_classes))


def step_model(run: Run, model: nn.Module, teacher: Optional[TeacherForward] = None,
               log: Optional[Callable[[str], None]] = None) -> nn.Module:
    """What the step calls: CUDA-graph replay on one GPU, DDP across processes (around the graphed student
    with ``ddp_graphs``), else the student itself. The student's graphs, and ``teacher``'s when it is graphed,
    are captured here for full training batches, so call it once the loader's workers are at work on the
    first batches: capture and data loading then overlap instead of following one another. ``log`` is told
    how long the capture took."""
    config = run.config
    t_capture = time.perf_counter()
    shape = train_batch_shape(config)
    teacher_graphed = teacher is not None and teacher.graphed is not None
    if teacher_graphed:
        teacher.capture(shape)
    graphs = train_graph_enabled(config.cuda_graphs, run.device, run.ranks.distributed, config.ddp_graphs)
    stepped = model
    if graphs and not run.ranks.distributed:
        stepped = StudentGraph(model, run.amp_dtype)
        stepped.capture(shape)
    elif graphs:  # graph first, then wrap (PyTorch's rule for partial-network capture under DDP)
        StudentGraph.for_ddp(model, run.amp_dtype, shape)
    if log is not None and (graphs or teacher_graphed):
        log(f"CUDA graphs captured in {time.perf_counter() - t_capture:.1f}s, while the loader's workers started")
    if run.ranks.distributed:
        # merging chooses indices without gradients, but every parameter is still used: no unused-param search
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[run.device.index] if run.device.type == "cuda" else None, find_unused_parameters=False
        )
    return stepped

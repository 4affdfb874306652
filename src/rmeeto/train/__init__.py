"""Re-training a merging Vim with distillation from the unmerged model (R-MeeTo), and training from scratch.

One loop for everything: the demo's teacher (from scratch, no distillation) and the merged student (from a
checkpoint, distilled from that same checkpoint) both go through :func:`train`. Distributed data parallel,
mixed precision, EMA, gradient accumulation, mixup/cutmix and distillation are options of that loop.

Launch (the CLI is a thin wrapper around :class:`TrainConfig` and :func:`train`)::

    # one process (CPU or one GPU)
    rmeeto retrain --model vim_small_patch16_224 --checkpoint vim_s_midclstok_80p5acc.pth \\
        --data /data/imagenet --preset paper --epochs 3 --out runs/vim_s_r11
    # several GPUs of one host (or, with --device cpu, several CPU processes over gloo)
    torchrun --nproc_per_node 4 -m rmeeto retrain ...same flags...
    # continue after a crash, a kill or Ctrl-C: everything is rebuilt from runs/vim_s_r11/last.pth
    rmeeto retrain --out runs/vim_s_r11 --resume auto ...

    from rmeeto.train import TrainConfig, train
    result = train(TrainConfig(model="vim_digits_patch4_32", checkpoint="teacher.pth",
                               merge=MergeConfig(num_merged=4), epochs=3, out="runs/x"))
    result.best_top1, result.history[-1]["top1"], result.best_path

The objective is ``loss = CE(student, targets) + alpha * KL(p_teacher || p_student)`` (batch mean, T = 1), the
classification term being soft-target cross-entropy under mixup/cutmix and label-smoothing cross-entropy
otherwise. The teacher is the *unmerged* model loaded from the same checkpoint, frozen and in eval mode.

Checkpoints (``last.pth`` every epoch and every ``save_every_steps`` updates, ``best.pth`` by validation top-1)
are written atomically and hold the :class:`TrainConfig`, the merge config and the model name, so resuming
rebuilds everything; they also hold the optimizer, scheduler, scaler, EMA, the position inside the epoch and
every rank's RNG states, so a resumed run reproduces the uninterrupted one exactly (same data order, same
augmentations: each sample's augmentation is seeded by (seed, epoch, position), independent of workers).
A non-finite loss (or non-finite weights at save time) stops the run before anything is written over the last
good checkpoint. Test hooks for the fault-tolerance tests: see :mod:`rmeeto.train.engine`.

The package, in the order a run uses it: :mod:`~rmeeto.train.config` (settings, the paper preset),
:mod:`~rmeeto.train.setup` (device, models, optimizer), :mod:`~rmeeto.train.data` (samplers, loaders),
:mod:`~rmeeto.train.state` (run state, checkpoints, RNG, resume, signals), :mod:`~rmeeto.train.engine`
(``train_one_epoch``, ``validate``, saving), with :mod:`~rmeeto.train.loss`, :mod:`~rmeeto.train.graphs`
(CUDA-graph replay), :mod:`~rmeeto.train.distributed` (ranks and their agreement) and
:mod:`~rmeeto.train.report` (log lines, ``log.jsonl``, TensorBoard).
"""

from __future__ import annotations

import dataclasses

import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch.nn as nn

from rmeeto import gpu_data
from rmeeto.train.config import (AMP_CHOICES, MIXUP_MODES, PAPER_DEVIATIONS, PAPER_SETTINGS, RUNTIME_FIELDS,
                                 NonFiniteLossError, TrainConfig, TrainError)
from rmeeto.train.data import ResumableSampler, build_data
from rmeeto.train.distributed import Ranks, init_distributed
from rmeeto.train.engine import (DebugHooks, repair_best, save_best, save_last, start_epoch, train_one_epoch,
                                 validate)
from rmeeto.train.graphs import StudentGraph, TeacherForward
from rmeeto.train.loss import DistillationLoss, build_criterion, distillation_forward
from rmeeto.train.rundir import RunFolder
from rmeeto.train.report import RunLog, check_tensorboard, expected_torch_warnings_quiet, format_table
from rmeeto.train.setup import (Run, Training, build_models, build_training, check_out_spares_inputs, prepare_run,
                                 step_model)
from rmeeto.train.state import RunState, SignalCatcher, find_resume_checkpoint, restore, seed_all

__all__ = [
    "TrainConfig",
    "TrainError",
    "NonFiniteLossError",
    "TrainResult",
    "DistillationLoss",
    "TeacherForward",
    "StudentGraph",
    "ResumableSampler",
    "PAPER_SETTINGS",
    "PAPER_DEVIATIONS",
    "AMP_CHOICES",
    "MIXUP_MODES",
    "RUNTIME_FIELDS",
    "build_criterion",
    "distillation_forward",
    "train",
    "find_resume_checkpoint",
]


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns.

    status: ``"finished"`` (every epoch ran) or ``"interrupted"`` (a SIGINT/SIGTERM stopped it after saving
    ``last.pth``); signal: the number of that signal on this rank (None when finished, or when the signal
    reached another rank). history: one dict per validated epoch (``epoch``, ``train_loss``, ``top1``,
    ``top5``, ``val_loss``, ``lr``, ``images_per_s``, ``seconds``, ``skipped_images`` (unreadable training
    files, bounded by ``max_bad_fraction``), ``skipped_val_images``, ``first_step_s`` and
    ``steady_images_per_s`` (the epoch's rate split at its first optimizer step; None for an epoch resumed in
    the middle), ``first_batch_s`` (the part of that first step spent waiting for the loader's first batch),
    and ``top1_ema`` / ``top5_ema`` with EMA), as in ``log.jsonl``. best_top1 / best_epoch: the score that picked ``best.pth``
    (EMA top-1 with EMA) and its epoch, None before any epoch was validated. seconds: wall time of the call.
    out: the output folder (None = nothing written). config: the settings the run used (a resumed run's stored
    ones). model: the trained student (merging, on the run's device); ema: its EMA copy or None.

    Also readable as a mapping (``result["history"]``) for code written against the dict this once was.
    """

    status: str
    signal: Optional[int]
    history: list
    best_top1: Optional[float]
    best_epoch: Optional[int]
    seconds: float
    out: Optional[str]
    config: TrainConfig
    model: nn.Module
    ema: Optional[nn.Module]

    @property
    def final(self) -> Optional[dict]:
        """The last epoch's record (None when no epoch was validated)."""
        return self.history[-1] if self.history else None

    @property
    def last_path(self) -> Optional[Path]:
        """``out/last.pth`` (to continue with ``resume="auto"``), None when nothing was written."""
        return self._file("last.pth")

    @property
    def best_path(self) -> Optional[Path]:
        """``out/best.pth``: the weights of ``best_epoch``, None when nothing was written."""
        return self._file("best.pth")

    def _file(self, name: str) -> Optional[Path]:
        path = Path(self.out) / name if self.out is not None else None
        return path if path is not None and path.is_file() else None

    def __getitem__(self, key: str):
        if key not in _RESULT_KEYS:
            raise KeyError(key)
        return getattr(self, key)


_RESULT_KEYS = frozenset(("status", "signal", "history", "best_top1", "best_epoch", "seconds", "out", "config",
                          "model", "ema", "final"))


def train(config: TrainConfig, *, resume: Optional[str] = None, overwrite: bool = False) -> TrainResult:
    """Train ``config`` (see the module docstring) and return a :class:`TrainResult`. ``resume``: None,
    ``"auto"`` (``out/last.pth`` if present) or a checkpoint path; a resumed run takes its settings from the
    checkpoint (only the runtime fields of :data:`RUNTIME_FIELDS`, e.g. ``out``, ``device``, ``workers``, may
    change). An ``out`` folder that already holds a run is refused unless resuming or ``overwrite`` (which
    replaces its files); a folder another run is writing is always refused. Raises :class:`TrainError` for bad
    input (before any work) and :class:`NonFiniteLossError` when the loss (or the weights) stop being finite."""
    ranks = init_distributed(config.device)
    # installed before the slow setup, so a SIGTERM that arrives while models and data are built still ends in
    # a clean stop (after the first step) instead of a traceback or no checkpoint
    catcher = SignalCatcher()
    folder = None
    try:
        with catcher:
            check_out_spares_inputs(config)
            if config.out is not None and ranks.master:
                folder = RunFolder(Path(config.out), resuming=resume is not None, overwrite=overwrite)
            return _train(config, resume, ranks, catcher)
    finally:
        if folder is not None:
            folder.release()
        ranks.close()


def _train(config: TrainConfig, resume: Optional[str], ranks: Ranks, catcher: SignalCatcher) -> TrainResult:
    t_start = time.perf_counter()
    log = RunLog(ranks)
    # setup: a resumed run's settings come from its checkpoint; bad input fails here, before any work
    run, ckpt, resume_path = prepare_run(config, resume, ranks, log.log)
    config = run.config
    check_tensorboard(config, ranks)

    seed_all(config.seed)
    data = build_data(config, ranks, run.device)  # fails fast on bad paths
    if config.pipeline == "auto" and data.pipeline == "gpu":
        usable = gpu_data.cpu_workers_per_rank(config.workers)  # what resolve_pipeline compared: -j, capped by cores
        log.log(f"input pipeline: gpu (nvJPEG decode and augmentation on the GPU), chosen because {usable} CPU "
                f"loader worker(s) per GPU (-j {config.workers}, at most the cores per GPU process) are fewer than "
                f"{gpu_data.GPU_PIPELINE_BELOW_WORKERS}; with "
                f"{gpu_data.GPU_PIPELINE_BELOW_WORKERS} or more CPU workers it is the CPU pipeline, which is faster "
                f"where the cores exist (decoding on the GPU takes GPU time from training)")
    if config.classes is None and data.classes is not None:
        # the folder's class list goes into every checkpoint's config: a resume numbers labels the same way, and
        # `rmeeto eval` maps another folder's class names onto this model's outputs
        run = dataclasses.replace(run, config=dataclasses.replace(config, classes=data.classes))
        config = run.config

    seed_all(config.seed)  # the same on every rank, so from-scratch weights agree
    model, teacher, ema = build_models(run, resuming=ckpt is not None)
    parts = build_training(run, model, teacher, ema, data.steps_per_epoch)

    seed_all(config.seed + ranks.rank)
    state = RunState()
    if ckpt is not None:
        state = restore(ckpt, resume_path, model=model, optimizer=parts.optimizer, scheduler=parts.scheduler,
                        scaler=parts.scaler, ema=ema, ranks=ranks, device=run.device, log=log.log)
        repair_best(run, parts, state, log.log)
    with expected_torch_warnings_quiet():  # PyTorch's notes on CUDA-graph training that are expected here
        status = _train_epochs(run, parts, data, state, catcher, log)
    log.close()
    if ranks.master and state.history and status == "finished":
        log.log("\n" + format_table(state.history))
    return TrainResult(
        status=status, signal=int(catcher.signum) if catcher.signum is not None else None, history=state.history,
        best_top1=state.best_top1 if state.best_epoch >= 0 else None,
        best_epoch=state.best_epoch if state.best_epoch >= 0 else None,
        seconds=time.perf_counter() - t_start, out=str(run.out) if run.out is not None else None, config=config,
        model=model, ema=ema.module if ema is not None else None,
    )


def _train_epochs(run: Run, parts: Training, data, state: RunState, catcher: SignalCatcher, log: RunLog) -> str:
    """The CUDA-graph capture and the epochs of :func:`train`, from ``state`` on -> "finished" or "interrupted"."""
    config = run.config
    # the first epoch's loader workers start reading now, while the CUDA graphs are captured
    batches = start_epoch(run, data, state) if state.epoch < config.epochs else None
    parts.step_model = step_model(run, parts.model, parts.teacher, log=log.log)

    log.start(config, state.history, config.epochs * data.steps_per_epoch, state.global_step)
    hooks, status = DebugHooks.from_env(), "finished"
    while state.epoch < config.epochs:
        ended = train_one_epoch(run, parts, data, state, catcher=catcher, log=log, hooks=hooks, batches=batches)
        batches = None  # the next epoch begins in train_one_epoch; this one's iterator (its workers) is let go
        if ended.stopped:
            save_last(run, parts, state)
            _log_stop(log, catcher, state, run.out)
            status = "interrupted"
            break
        record, score = validate(run, parts, data, state, ended)
        is_best = state.finish_epoch(record, score)
        log.epoch_end(record)
        # last.pth first: a kill between the two saves leaves a last.pth (at this epoch's end, holding exactly
        # the best weights) from which a resumed run rewrites best.pth (repair_best)
        save_last(run, parts, state)
        if is_best:
            save_best(run, parts, state.best_epoch, state.best_top1)
    return status


def _log_stop(log: RunLog, catcher: SignalCatcher, state: RunState, out: Optional[Path]) -> None:
    name = signal.Signals(catcher.signum).name if catcher.signum else "a signal on another rank"
    where = f"; saved {out / 'last.pth'} (continue with --resume auto)" if out is not None else ""
    log.log(f"stopped by {name} at epoch {state.epoch} step {state.step_in_epoch}{where}")

"""One epoch of training, its validation, and saving: what :func:`rmeeto.train.train` repeats.

A step is: ``scheduler.step_update`` at the first micro-batch, forward (teacher, student under autocast, loss),
one cross-rank agreement (mean loss, skip an empty batch, stop for a signal), backward scaled by the
accumulation, and at the last micro-batch the optimizer step (optional gradient clipping), the EMA update and
the progress report. A non-finite loss stops the run before anything is written over the last good checkpoint.

Test hooks (environment variables, for the fault-tolerance tests): ``RMEETO_DEBUG_STEP_SLEEP=seconds`` sleeps
after every optimizer step (so a test can kill the run mid-epoch); ``RMEETO_DEBUG_NAN_AT_STEP=k`` makes the
loss NaN at optimizer step k; ``RMEETO_DEBUG_KILL_AT_STEP=k`` SIGKILLs the process right after optimizer
step k (and any checkpoint written at it), only in the first attempt of a torchrun job (TORCHELASTIC_RESTART_COUNT
unset or 0), so an elastic restart that resumes runs on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

from rmeeto import data as rdata
from rmeeto.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from rmeeto.evaluate import evaluate
from rmeeto.train.config import NonFiniteLossError, TrainError
from rmeeto.train.data import CountSkips, NoReadableImage, TrainData
from rmeeto.train.distributed import agree_on_step, gather_from_ranks, sum_over_ranks
from rmeeto.train.loss import distillation_forward
from rmeeto.train.report import RunLog
from rmeeto.train.setup import Run, Training, weights_finite
from rmeeto.train.state import (RunState, SignalCatcher, best_checkpoint, last_checkpoint, merge_shuffler_of, new_partial,
                                 rng_state)

__all__ = ["DebugHooks", "EpochEnd", "EpochBatches", "start_epoch", "train_one_epoch", "validate", "save_last",
           "save_best", "repair_best"]


@dataclass(frozen=True)
class DebugHooks:
    """The test hooks of the module docstring, read from the environment when a run starts."""

    step_sleep: float = 0.0
    nan_at_step: int = -1
    kill_at_step: int = -1

    @classmethod
    def from_env(cls) -> "DebugHooks":
        first_attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) == 0
        return cls(step_sleep=float(os.environ.get("RMEETO_DEBUG_STEP_SLEEP", "0") or 0),
                   nan_at_step=int(os.environ.get("RMEETO_DEBUG_NAN_AT_STEP", "-1") or -1),
                   kill_at_step=int(os.environ.get("RMEETO_DEBUG_KILL_AT_STEP", "-1") or -1) if first_attempt else -1)


@dataclass(frozen=True)
class EpochEnd:
    """How :func:`train_one_epoch` ended: ``stopped`` by a signal (on any rank) or at the epoch's end;
    ``skips``: the unreadable training images of this epoch so far; ``first_step``: (seconds, images) at the end
    of the epoch's first optimizer step, when this call trained the epoch from its start (the start-up that
    step carries: loader workers starting, the first batches, CUDA-graph captures), else None;
    ``first_batch_s``: in that case, the seconds until the loader handed over the first batch (the part of that
    start-up spent waiting for data), else None."""

    stopped: bool
    skips: rdata.SkipLog
    first_step: Optional[tuple[float, int]] = None
    first_batch_s: Optional[float] = None


@dataclass
class EpochBatches:
    """An epoch's training batches, begun: the sampler is at the epoch's start (or resume point) and the
    loader's iterator exists, so its workers are already reading. ``started``: ``time.perf_counter()`` just
    before, where the epoch's time starts; ``open_s``: the seconds creating the iterator took."""

    iterator: Iterator
    started: float
    open_s: float


# ------------------------------------------------------------------------------------------------ training
def start_epoch(run: Run, data: TrainData, state: RunState) -> EpochBatches:
    """Begin epoch ``state.epoch`` at micro-batch ``state.step_in_epoch``: the loader's workers start on its
    first batches now. :func:`rmeeto.train.train` begins the first epoch before capturing the CUDA graphs,
    so that the capture and the first batches overlap."""
    data.sampler.set_epoch(state.epoch, state.step_in_epoch * run.config.batch_size)
    started = time.perf_counter()
    iterator = iter(data.train_loader)
    return EpochBatches(iterator, started, time.perf_counter() - started)


def _forward(run: Run, parts: Training, batch, last_micro: bool, poison: bool):
    """One micro-batch's forward -> (loss, images in it), or (None, 0) when the batch had no readable image.
    ``batch``: ([batch, 3, H, W] images, [batch] labels), as the loader's collate leaves them."""
    if batch is None or isinstance(batch, NoReadableImage):
        return None, 0
    images, targets = batch[0].to(run.device, non_blocking=True), batch[1].to(run.device, non_blocking=True)
    if parts.mixup is not None and images.shape[0] % 2:  # a corrupt image left the batch odd
        images, targets = images[:-1], targets[:-1]
    if images.shape[0] == 0:  # one readable image, dropped for mixup: a mean loss over nothing would be NaN
        return None, 0
    if parts.mixup is not None:
        images, targets = parts.mixup(images, targets)
    sync = contextlib.nullcontext()
    if run.ranks.distributed and not last_micro:
        sync = parts.step_model.no_sync()  # DDP: all-reduce the gradients once, at the last micro-batch
    with sync:
        loss, _ = distillation_forward(parts.step_model, parts.teacher, parts.criterion, images, targets,
                                       run.amp_dtype)
    if poison:
        loss = loss * float("nan")
    return loss, images.shape[0]


def _optimizer_step(run: Run, parts: Training, state: RunState) -> None:
    config = run.config
    if config.clip_grad is not None:
        parts.scaler.unscale_(parts.optimizer)
        torch.nn.utils.clip_grad_norm_(parts.model.parameters(), config.clip_grad)
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    parts.optimizer.zero_grad(set_to_none=True)
    state.global_step += 1
    if parts.ema is not None:
        parts.ema.update(parts.model, step=state.global_step)


def _non_finite_loss(run: Run, state: RunState, loss: float) -> NonFiniteLossError:
    last = run.out / "last.pth" if run.out is not None else None
    where = f"{last}" if last is not None and last.exists() else None
    return NonFiniteLossError(
        f"non-finite loss at epoch {state.epoch} step {state.step_in_epoch} (loss={loss}); stopped "
        + (f"with the last good checkpoint {where} left intact" if where else "before writing any checkpoint"))


def train_one_epoch(run: Run, parts: Training, data: TrainData, state: RunState, *, catcher: SignalCatcher,
                    log: RunLog, hooks: DebugHooks, batches: Optional[EpochBatches] = None) -> EpochEnd:
    """Train epoch ``state.epoch`` from micro-batch ``state.step_in_epoch`` to its end, or until a stop signal
    (on any rank) after an optimizer step; ``batches``: the epoch already begun by :func:`start_epoch` (its
    time counts from then), else it begins here. Advances ``state`` as it goes and writes ``last.pth`` every
    ``save_every_steps`` optimizer steps. Raises NonFiniteLossError when the loss stops being finite."""
    config = run.config
    if state.step_in_epoch == 0:
        state.partial = new_partial()
    if batches is None:
        batches = start_epoch(run, data, state)
    parts.step_model.train()
    t_epoch, seconds_before = batches.started, state.partial["seconds"]
    from_start, first_step, first_batch_s = state.step_in_epoch == 0, None, None
    skips = rdata.SkipLog()
    skips.paths.update(state.partial.get("skipped", {}))  # files already skipped earlier in a resumed epoch
    log.epoch_start(state.epoch)
    t_wait = time.perf_counter()
    for batch in batches.iterator:
        if state.step_in_epoch >= data.batches_per_epoch:
            break
        if from_start and first_batch_s is None:  # waiting for data only: not a capture done meanwhile
            first_batch_s = batches.open_s + time.perf_counter() - t_wait
        micro = state.step_in_epoch % config.accum_steps
        last_micro = micro == config.accum_steps - 1
        if micro == 0:
            parts.scheduler.step_update(num_updates=state.global_step)  # the lr is a function of the step
        skips.update(batch)
        loss, n_images = _forward(run, parts, batch, last_micro, poison=state.global_step == hooks.nan_at_step)
        agreed = agree_on_step(loss, catcher.requested, run.ranks, run.device)
        if not agreed.skip:  # else: some rank's batch had no readable image; every rank skips it together
            if not agreed.finite:
                log.close()
                raise _non_finite_loss(run, state, agreed.loss)
            parts.scaler.scale(loss / config.accum_steps).backward()
            state.partial["loss_sum"] += agreed.loss
            state.partial["loss_count"] += 1
            state.partial["images"] += n_images * run.ranks.world
        state.step_in_epoch += 1
        if not last_micro:
            continue
        _optimizer_step(run, parts, state)
        if hooks.step_sleep:
            time.sleep(hooks.step_sleep)
        elapsed = seconds_before + time.perf_counter() - t_epoch
        state.partial["seconds"] = elapsed
        state.partial["skipped"] = dict(skips.paths)
        if from_start and first_step is None:
            first_step = (elapsed, state.partial["images"])
        log.step(state.global_step, agreed.loss, parts.optimizer.param_groups[0]["lr"],
                 state.partial["images"] / max(elapsed, 1e-9))
        if agreed.stop:
            return EpochEnd(stopped=True, skips=skips, first_step=first_step, first_batch_s=first_batch_s)
        if config.save_every_steps and state.global_step % config.save_every_steps == 0 \
                and state.step_in_epoch < data.batches_per_epoch:
            save_last(run, parts, state)
        if state.global_step == hooks.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)
    return EpochEnd(stopped=False, skips=skips, first_step=first_step, first_batch_s=first_batch_s)


# ------------------------------------------------------------------------------------------------ validation
def validate(run: Run, parts: Training, data: TrainData, state: RunState, ended: EpochEnd) -> tuple[dict, float]:
    """Score the student (and its EMA) on the validation split -> (the epoch's record for the history and
    ``log.jsonl``, the score that picks ``best.pth``: EMA top-1 when there is an EMA, as in the release).

    ``ended``: how the epoch's training ended (its unreadable images and start-up split). ``images_per_s`` is
    the whole epoch's rate; with ``ended.first_step`` the record also splits it into ``first_step_s``, the
    seconds to the end of the first optimizer step (start-up included), and ``steady_images_per_s``, the rate
    over the rest of the epoch (both None when unknown: an epoch resumed in the middle, or one step long), and
    ``first_batch_s``, the part of that first step spent waiting for the loader's first batch (None likewise)."""
    config, partial, skips, first_step = run.config, state.partial, ended.skips, ended.first_step
    train_seconds = partial["seconds"]
    val_skips = rdata.SkipLog()  # apart from training's: --max-bad-fraction bounds the training files
    val = evaluate(parts.model, CountSkips(data.val_loader, val_skips), device=run.device, amp_dtype=run.amp_dtype,
                   progress=config.progress, desc="val")
    record = {
        "epoch": state.epoch,
        "train_loss": partial["loss_sum"] / max(partial["loss_count"], 1),
        "top1": val["top1"], "top5": val["top5"], "val_loss": val["loss"],
        "lr": parts.optimizer.param_groups[0]["lr"],
        "images_per_s": partial["images"] / max(train_seconds, 1e-9),
        "seconds": train_seconds + val["seconds"],
        "skipped_images": sum_over_ranks(skips.count, run.ranks, run.device),
        "skipped_val_images": sum_over_ranks(val_skips.count, run.ranks, run.device),
        "first_step_s": None, "steady_images_per_s": None, "first_batch_s": None,
    }
    if first_step is not None and partial["images"] > first_step[1] and train_seconds > first_step[0]:
        record["first_step_s"] = first_step[0]
        record["steady_images_per_s"] = (partial["images"] - first_step[1]) / (train_seconds - first_step[0])
        record["first_batch_s"] = ended.first_batch_s
    _check_readable(run, data, state, record, skips)
    if val["n"] == 0:  # a top-1 of 0 % would pick (or fail to pick) best.pth on nothing
        example = f" (e.g. {next(iter(val_skips.paths))})" if val_skips.paths else ""
        raise TrainError(f"epoch {state.epoch}: no readable validation image in {config.data}; "
                         f"{record['skipped_val_images']} file(s) skipped as unreadable{example}")
    score = val["top1"]
    if parts.ema is not None:
        val_ema = evaluate(parts.ema.module, CountSkips(data.val_loader, rdata.SkipLog()), device=run.device,
                           amp_dtype=run.amp_dtype, progress=config.progress, desc="val (ema)")
        record.update(top1_ema=val_ema["top1"], top5_ema=val_ema["top5"])
        score = val_ema["top1"]
    return record, score


def _check_readable(run: Run, data: TrainData, state: RunState, record: dict, skips: rdata.SkipLog) -> None:
    """Stop (before anything is saved for this epoch) when the epoch trained on no image at all, or when more
    than ``max_bad_fraction`` of the training files were unreadable: a model trained on what is left would be
    reported as a success. Every rank reaches the same decision (the counts are summed over ranks)."""
    skipped, total = record["skipped_images"], len(data.train_set)
    example = f" (e.g. {next(iter(skips.paths))})" if skips.paths else ""
    if state.partial["images"] == 0:
        raise TrainError(f"epoch {state.epoch}: no readable training image in {run.config.data}; "
                         f"{skipped} file(s) skipped as unreadable{example}")
    if skipped > run.config.max_bad_fraction * total:
        raise TrainError(f"{skipped} of {total} training images are unreadable, more than --max-bad-fraction "
                         f"{run.config.max_bad_fraction:g}{example}; fix or remove them, or raise the limit")


# ------------------------------------------------------------------------------------------------ saving
def _check_weights(run: Run, parts: Training, state: RunState) -> None:
    # a finite loss can still come with an inf/NaN gradient; never let such weights replace a good file
    if not weights_finite(parts.model):
        last = run.out / "last.pth"
        raise NonFiniteLossError(
            f"non-finite weights after epoch {state.epoch} step {state.step_in_epoch}; stopped without saving"
            + (f", {last} is the last good checkpoint" if last.exists() else ""))


def save_last(run: Run, parts: Training, state: RunState) -> None:
    """Write ``out/last.pth`` at ``state``'s position (atomically; rank 0 writes, but every rank must call
    it: the RNG states are gathered from all). Raises NonFiniteLossError instead of saving bad weights."""
    if run.out is None:
        return
    _check_weights(run, parts, state)
    rng_all = gather_from_ranks(rng_state(run.device, merge_shuffler_of(parts.model)), run.ranks)
    if run.ranks.master:
        ckpt = last_checkpoint(state, state.epoch, state.step_in_epoch, config=run.config, model=parts.model,
                               optimizer=parts.optimizer, scheduler=parts.scheduler, scaler=parts.scaler,
                               ema=parts.ema, rng_all=rng_all)
        _save(ckpt, run.out / "last.pth")


def save_best(run: Run, parts: Training, epoch: int, score: float) -> None:
    """Write ``out/best.pth``: the weights of ``epoch``, which scored ``score`` (rank 0 only)."""
    if run.out is not None and run.ranks.master:
        _save(best_checkpoint(parts.model, parts.ema, epoch, score, run.config), run.out / "best.pth")


def _save(ckpt: dict, path) -> None:
    """save_checkpoint (atomic: a failed write leaves the previous file as it was), with a one-line TrainError
    for a full disk or a folder that stopped being writable."""
    try:
        save_checkpoint({k: v for k, v in ckpt.items() if v is not None}, path)
    except OSError as exc:
        raise TrainError(f"disk full / not writable: {path} ({exc.strerror or exc}); the previous checkpoint "
                         "is intact") from None


def repair_best(run: Run, parts: Training, state: RunState, log) -> None:
    """After a resume: make ``best.pth`` what ``last.pth`` says it is. A run stopped between the two saves at
    an epoch end left a ``last.pth`` at the start of the next epoch whose weights *are* the best epoch's, so
    best.pth is rewritten from them exactly. Any other mismatch cannot be rebuilt: the best score is reset so
    the next validated epoch writes a best.pth that matches."""
    if run.out is None or state.best_epoch < 0:
        return
    path = run.out / "best.pth"
    stored = None
    if path.is_file():
        try:
            stored = read_checkpoint(path).get("epoch")
        except CheckpointError:
            stored = None
    if stored == state.best_epoch:
        return
    if state.best_epoch == state.epoch - 1 and state.step_in_epoch == 0:
        log(f"resume: {path} is missing or not from epoch {state.best_epoch} (the run stopped before saving it); "
            "rewriting it from last.pth, which holds that epoch's weights")
        save_best(run, parts, state.best_epoch, state.best_top1)
        return
    log(f"resume: warning: {path} is missing or not from epoch {state.best_epoch} and cannot be rebuilt; "
        "the next validated epoch writes a new best.pth")
    state.best_top1, state.best_epoch = -1.0, -1

"""The run state and what survives a crash: checkpoints to and from, RNG states, resuming, stop signals.

``last.pth`` (written every epoch and every ``save_every_steps`` updates) holds everything
:func:`last_checkpoint` lists: the weights, optimizer, scheduler, scaler and EMA, the position inside the epoch,
the partial epoch's running sums, every rank's RNG states, the history, and the :class:`TrainConfig` with the
model name and merge config, so ``--resume`` rebuilds the run and reproduces the uninterrupted one exactly.
``best.pth`` (:func:`best_checkpoint`) holds the weights of the best epoch by validation top-1 and the config.
The key names are a file format: checkpoints written by earlier versions of this package must stay loadable.
"""

from __future__ import annotations

import dataclasses
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn as nn

from rmeeto.checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from rmeeto.train.config import RUNTIME_FIELDS, TrainConfig, TrainError
from rmeeto.train.distributed import Ranks

__all__ = ["RunState", "new_partial", "seed_all", "rng_state", "set_rng_state", "find_resume_checkpoint",
           "read_resume", "stored_config", "resumed_config", "load_weights", "restore", "last_checkpoint",
           "best_checkpoint", "SignalCatcher"]


def new_partial() -> dict:
    """Running sums of the epoch in progress (stored in ``last.pth`` so a resumed epoch reports the same)."""
    return {"loss_sum": 0.0, "loss_count": 0, "images": 0, "seconds": 0.0}


@dataclass
class RunState:
    """Where the run is. ``epoch`` / ``step_in_epoch``: the next micro-batch to train (``step_in_epoch`` counts
    micro-batches); ``global_step``: optimizer steps done; ``best_epoch`` is -1 before the first validation."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_top1: float = -1.0
    best_epoch: int = -1
    history: list = field(default_factory=list)
    partial: dict = field(default_factory=new_partial)

    def finish_epoch(self, record: dict, score: float) -> bool:
        """Record a validated epoch and move to the start of the next one. Returns whether ``score`` (the
        validation top-1 that picks ``best.pth``) is the best so far."""
        is_best = score > self.best_top1
        if is_best:
            self.best_top1, self.best_epoch = score, self.epoch
        self.history.append(record)
        self.partial = new_partial()
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        return is_best


# ------------------------------------------------------------------------------------------------ RNG
def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def merge_shuffler_of(model: Optional[nn.Module]):
    """The token shuffler of a merged model (``model.merge_shuffler``, looked for through DDP's ``.module``),
    or None: its generator is part of the run's random state when ``MergeConfig.shuffle_rate`` > 0."""
    while model is not None:
        shuffler = getattr(model, "merge_shuffler", None)
        if shuffler is not None:
            return shuffler
        model = getattr(model, "module", None)
    return None


def rng_state(device: torch.device, shuffler=None) -> dict:
    """This process's python, numpy, torch (and CUDA) RNG states, as tensors and plain values (weights-only
    loadable), plus the token shuffler's generator when the model shuffles."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    if shuffler is not None:
        state["shuffle"] = shuffler.generator.get_state()
    return state


def set_rng_state(state: dict, device: torch.device, shuffler=None) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    if shuffler is not None and "shuffle" in state:
        shuffler.generator.set_state(state["shuffle"])


# ------------------------------------------------------------------------------------------------ reading
def find_resume_checkpoint(resume: Optional[str], out: Optional[str]) -> Optional[Path]:
    """``"auto"`` -> ``out/last.pth`` if it exists (else None: start fresh); a path -> that file; None -> None."""
    if resume is None:
        return None
    if resume == "auto":
        if out is None:
            raise TrainError("--resume auto looks for last.pth in the output folder: give --out")
        path = Path(out) / "last.pth"
        return path if path.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise TrainError(f"resume checkpoint {path} does not exist")
    return path


_NUMBER = (int, float)
# what every entry of a last.pth must be (a hand-edited or foreign file fails here in one line, not with a
# KeyError/TypeError deep inside restore); None in a tuple: the entry may be absent or None
_RESUME_ENTRIES: dict[str, tuple] = {
    "model": (dict,), "optimizer": (dict,), "lr_scheduler": (dict,), "epoch": (int,), "step_in_epoch": (int,),
    "global_step": (int,), "best_top1": _NUMBER, "best_epoch": (int,), "config": (dict,),
    "history": (list, None), "partial": (dict, None), "rng": (list, None), "scaler": (dict, None),
    "model_ema": (dict, None),
}


def _check_resume_entries(ckpt: dict, path: Path) -> None:
    """TrainError naming the first entry of a training checkpoint that is missing or of the wrong type."""
    for key, kinds in _RESUME_ENTRIES.items():
        value = ckpt.get(key)
        if value is None:
            if None in kinds:
                continue
            raise TrainError(f"cannot resume from {path}: its {key!r} entry is missing (a damaged or hand-edited "
                             "last.pth); start afresh with --overwrite or resume from another checkpoint")
        types = tuple(k for k in kinds if k is not None)
        if isinstance(value, bool) or not isinstance(value, types):
            want = " or ".join(t.__name__ for t in types)
            raise TrainError(f"cannot resume from {path}: its {key!r} entry is a {type(value).__name__}, not "
                             f"a {want} (a damaged or hand-edited last.pth)")
    if ckpt["epoch"] < 0 or ckpt["step_in_epoch"] < 0 or ckpt["global_step"] < 0 or ckpt["best_epoch"] < -1:
        raise TrainError(f"cannot resume from {path}: negative epoch or step counts (a damaged or hand-edited "
                         "last.pth)")
    if not all(isinstance(h, dict) for h in ckpt.get("history") or []):
        raise TrainError(f"cannot resume from {path}: its 'history' entry is not a list of per-epoch records")
    partial = ckpt.get("partial")
    if partial is not None and (not all(isinstance(partial.get(k), _NUMBER) for k in new_partial())
                                or not isinstance(partial.get("skipped", {}), dict)):
        raise TrainError(f"cannot resume from {path}: its 'partial' entry is not the running sums of an epoch "
                         f"({', '.join(new_partial())})")


def read_resume(path: Path) -> dict:
    """The training checkpoint at ``path`` (read weights-only). Raises TrainError for anything else."""
    try:
        ckpt = read_checkpoint(path)
    except CheckpointError as exc:
        raise TrainError(str(exc)) from None
    for key in ("config", "epoch", "step_in_epoch", "optimizer"):
        if key not in ckpt:
            raise TrainError(f"{path} is not an rmeeto training checkpoint (no {key!r} entry); use it as "
                             "--checkpoint to start a new run from its weights")
    _check_resume_entries(ckpt, path)
    return ckpt


def stored_config(ckpt: dict, path: Path) -> TrainConfig:
    """The settings a training checkpoint (:func:`read_resume`) stores; TrainError when they are not valid."""
    try:
        return TrainConfig.from_dict(ckpt["config"])
    except (TypeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TrainError(f"cannot resume from {path}: its stored config is not valid ({first})") from None


def resumed_config(config: TrainConfig, ckpt: dict, path: Path, log: Callable[[str], None]) -> TrainConfig:
    """The stored settings of a resumed run, with this call's runtime fields (:data:`RUNTIME_FIELDS`)."""
    saved = stored_config(ckpt, path)
    changed = [f.name for f in dataclasses.fields(TrainConfig)
               if f.name not in RUNTIME_FIELDS and getattr(saved, f.name) != getattr(config, f.name)
               # the run stores its folder's class list when none was given: not giving it again is no change
               and not (f.name == "classes" and config.classes is None)]
    if changed:
        log(f"resume: using the settings stored in {path} (ignoring new values of {', '.join(changed)})")
    return dataclasses.replace(saved, **{k: getattr(config, k) for k in RUNTIME_FIELDS})


def load_weights(model: nn.Module, path: str, use_ema: bool, what: str):
    """Initial weights from a checkpoint file; ``what`` names the flag in the one-line TrainError. Returns
    :func:`rmeeto.checkpoint.load_checkpoint`'s result (``head_reset``: the file's classifier did not fit)."""
    try:
        return load_checkpoint(model, path, use_ema=use_ema, verbose=False)
    except CheckpointError as exc:
        raise TrainError(f"{what}: {exc}") from None


def restore(ckpt: dict, path: Path, *, model: nn.Module, optimizer, scheduler, scaler, ema, ranks: Ranks,
            device: torch.device, log: Callable[[str], None]) -> RunState:
    """Load a ``last.pth`` into the built objects and this rank's RNG; returns where the run continues."""
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["lr_scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        if ema is not None:
            ema.module.load_state_dict(ckpt["model_ema"])
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TrainError(f"cannot resume from {path}: {first}") from None
    state = RunState(epoch=int(ckpt["epoch"]), step_in_epoch=int(ckpt["step_in_epoch"]),
                     global_step=int(ckpt["global_step"]), best_top1=float(ckpt["best_top1"]),
                     best_epoch=int(ckpt["best_epoch"]), history=list(ckpt.get("history", [])),
                     partial=dict(ckpt.get("partial", new_partial())))
    states = ckpt.get("rng", [])
    if len(states) == ranks.world:
        set_rng_state(states[ranks.rank], device, merge_shuffler_of(model))
    else:
        log(f"resume: the checkpoint was written by {len(states)} process(es), this run has {ranks.world}; "
            "the data order is kept but random augmentation streams differ")
    log(f"resumed from {path} at epoch {state.epoch} batch {state.step_in_epoch} (step {state.global_step})")
    return state


# ------------------------------------------------------------------------------------------------ writing
def _identity(config: TrainConfig) -> dict:
    """What every checkpoint carries to rebuild its model: the run's config, the model name, the merge config."""
    return {"config": config.to_dict(), "model_name": config.model, "merge_config": config.merge.to_dict()}


def last_checkpoint(state: RunState, epoch: int, step_in_epoch: int, *, config: TrainConfig, model: nn.Module,
                    optimizer, scheduler, scaler, ema, rng_all: list) -> dict:
    """The contents of ``last.pth`` (entries that are None are left out when saved). ``rng_all``: every rank's
    :func:`rng_state`, in rank order."""
    return {
        "model": model.state_dict(),
        "model_ema": ema.module.state_dict() if ema is not None else None,
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "epoch": epoch,
        "step_in_epoch": step_in_epoch,
        "global_step": state.global_step,
        "best_top1": state.best_top1,
        "best_epoch": state.best_epoch,
        "history": state.history,
        "partial": dict(state.partial),
        "rng": rng_all,
        **_identity(config),
    }


def best_checkpoint(model: nn.Module, ema, epoch: int, top1: float, config: TrainConfig) -> dict:
    """The contents of ``best.pth``: the weights (and EMA weights) of epoch ``epoch`` that scored ``top1``."""
    best = {"model": model.state_dict(), "epoch": epoch, "top1": top1, **_identity(config)}
    if ema is not None:
        best["model_ema"] = ema.module.state_dict()
    return best


# ------------------------------------------------------------------------------------------------ signals
class SignalCatcher:
    """Turns SIGINT/SIGTERM into a flag checked between optimizer steps (so the loop can save and exit).
    A second Ctrl-C stops at once, unless it comes within ``repeat_window`` seconds of the first: wrappers that
    forward signals (torchrun, srun, some shells) deliver one Ctrl-C twice, which must not count as two.
    Handlers are installed only in the main thread and restored on exit."""

    def __init__(self, repeat_window: float = 1.0):
        self.signum: Optional[int] = None
        self.repeat_window = repeat_window
        self._first_at = 0.0
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        now = time.monotonic()
        if self.signum is not None:
            if signum == signal.SIGINT and now - self._first_at > self.repeat_window:
                raise KeyboardInterrupt  # a second, deliberate Ctrl-C: stop right now
            return
        self.signum, self._first_at = signum, now

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

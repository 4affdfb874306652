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

The objective is ``loss = CE(student, targets) + alpha * KL(p_teacher || p_student)`` (batch mean, T = 1), the
classification term being soft-target cross-entropy under mixup/cutmix and label-smoothing cross-entropy
otherwise. The teacher is the *unmerged* model loaded from the same checkpoint, frozen and in eval mode.

Checkpoints (``last.pth`` every epoch and every ``save_every_steps`` updates, ``best.pth`` by validation top-1)
are written atomically and hold the :class:`TrainConfig`, the merge config and the model name, so resuming
rebuilds everything; they also hold the optimizer, scheduler, scaler, EMA, the position inside the epoch and
every rank's RNG states, so a resumed run reproduces the uninterrupted one exactly (same data order, same
augmentations: each sample's augmentation is seeded by (seed, epoch, position), independent of workers).
A non-finite loss (or non-finite weights at save time) stops the run before anything is written over the last
good checkpoint.

Test hooks (environment variables, for the fault-tolerance tests): ``RMEETO_DEBUG_STEP_SLEEP=seconds`` sleeps
after every optimizer step (so a test can kill the run mid-epoch); ``RMEETO_DEBUG_NAN_AT_STEP=k`` makes the
loss NaN at optimizer step k.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from rmeeto.merge import MergeConfig, apply_merge
from rmeeto.models import create_model, get_config
from rmeeto.runtime import resolve_device, resolve_dtype

__all__ = [
    "TrainConfig",
    "TrainError",
    "NonFiniteLossError",
    "DistillationLoss",
    "ResumableSampler",
    "PAPER_SETTINGS",
    "PAPER_DEVIATIONS",
    "train",
    "find_resume_checkpoint",
]

# The official re-training recipe (SPEC section 4), as TrainConfig fields. ``epochs`` comes from the model's
# registry entry (Ti 30, S/B 15) and ``ema`` is on for the models whose entry asks for it (Vim-B).
PAPER_SETTINGS: dict[str, Any] = dict(
    lr=2e-5, min_lr=1e-6, batch_size=128, weight_decay=0.05, wd_exempt=False, warmup_epochs=0.0, drop_path=0.1,
    mixup=0.8, cutmix=1.0, mixup_prob=1.0, mixup_switch_prob=0.5, mixup_mode="batch", smoothing=0.1,
    auto_augment="rand-m9-mstd0.5-inc1", reprob=0.25, repeated_aug=3, alpha=0.5, clip_grad=None,
    ema_decay=0.99996,
)

# Where ``--preset paper`` deliberately differs from the release, and why.
PAPER_DEVIATIONS: dict[str, str] = {
    "teacher mode": "the teacher runs in eval mode (the release leaves it in train mode, so its DropPath 0.1 is "
                    "active and the distillation target is noisy)",
    "optimizer steps": "one AdamW step per batch (the release makes 3 steps per 2 batches through a hard-coded "
                       "accumulation of 2 that steps the optimizer every iteration anyway); --accum-steps is an "
                       "explicit, real accumulation",
    "lr schedule": "cosine stepped per iteration (the release steps it per epoch, so epochs 0 and 1 both run "
                   "at the base lr)",
    "anomaly detection": "off (the release trains under torch.autograd anomaly detection, which only slows it)",
    "precision": "bf16 autocast on CUDA (the release computes in fp32 under an inert GradScaler); "
                 "--amp fp32 restores it",
    "distillation flag": "alpha is a number and alpha=0 disables the teacher (the release's --distill is a "
                         "string, so '--distill False' turns distillation on)",
    "EMA": "updated after every optimizer step (the release updates it every 2nd iteration)",
}

AMP_CHOICES = ("auto", "bf16", "fp16", "fp32")  # rmeeto.runtime's dtype names
MIXUP_MODES = ("batch", "pair", "elem")
RUNTIME_FIELDS = ("out", "device", "workers", "progress", "tensorboard", "save_every_steps", "cuda_graphs")  # free on resume


class TrainError(RuntimeError):
    """A user-facing setup problem (bad path, empty data set, unusable checkpoint...): one line, before any work."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped without writing a checkpoint after it."""


def _choice(name: str, value: Any, valid) -> None:
    if value not in valid:
        raise ValueError(f"{name}={value!r} is not valid; choose from {', '.join(map(repr, valid))}")


# ============================================================================================ config
@dataclass(frozen=True)
class TrainConfig:
    """Everything a (re-)training run depends on. Saved in every checkpoint it writes.

    Model and data
        model: registered model name.  data: ``"digits"`` (embedded) or an image folder with train/ and val/.
        checkpoint: initial weights of the student and, unless ``teacher`` is given, of the teacher; None trains
        from scratch.  use_ema_weights: take the checkpoint's ``model_ema`` entry (the Vim-B file).
        merge: the student's :class:`MergeConfig` (the default merges nothing).
    Optimisation
        epochs; batch_size (per process); accum_steps (micro-batches per optimizer step);
        lr: base learning rate per 512 images, scaled by the global batch (batch_size * accum_steps * world / 512);
        min_lr (not scaled, as in the release); warmup_epochs (may be fractional) from warmup_lr;
        weight_decay, wd_exempt (no decay for 1-D params, biases and ``model.no_weight_decay()``: A_log, D,
        pos_embed, cls_token); clip_grad (max grad norm, None = off); drop_path (student's stochastic depth).
    Loss
        alpha: weight of KL(p_teacher || p_student); 0 builds no teacher.  smoothing: label smoothing.
    Augmentation (timm)
        train_aug: random-resized-crop/flip (+ the options below) for training images; auto_augment (e.g.
        ``"rand-m9-mstd0.5-inc1"``); reprob (random erasing); mixup / cutmix alphas, mixup_prob,
        mixup_switch_prob, mixup_mode; repeated_aug: repeats per image per epoch (1 = off, 3 = the paper).
    Runtime
        ema, ema_decay; amp ("auto" = bf16 on CUDA, fp32 on CPU); device ("auto"); seed; workers;
        eval_batch_size (default 2 * batch_size); out (None = write nothing); save_every_steps (0 = only at
        epoch ends); tensorboard; progress; cuda_graphs (single-process CUDA runs replay the student's forward
        and backward and the teacher's forward from CUDA graphs: same arithmetic, no per-op host work; the
        capture's warm-up draws drop-path randomness, so a resumed run is not bit-identical to an uninterrupted
        one unless cuda_graphs is off).
    """

    model: str
    data: str = "digits"
    checkpoint: Optional[str] = None
    teacher: Optional[str] = None
    use_ema_weights: bool = False
    merge: MergeConfig = field(default_factory=MergeConfig)
    epochs: int = 3
    batch_size: int = 128
    accum_steps: int = 1
    lr: float = 2e-5
    min_lr: float = 1e-6
    warmup_epochs: float = 0.0
    warmup_lr: float = 1e-6
    weight_decay: float = 0.05
    wd_exempt: bool = True
    clip_grad: Optional[float] = None
    drop_path: float = 0.1
    alpha: float = 0.5
    smoothing: float = 0.1
    train_aug: bool = True
    auto_augment: Optional[str] = None
    reprob: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"
    repeated_aug: int = 1
    ema: bool = False
    ema_decay: float = 0.99996
    amp: str = "auto"
    device: str = "auto"
    seed: int = 0
    workers: int = 2
    eval_batch_size: Optional[int] = None
    out: Optional[str] = None
    save_every_steps: int = 0
    tensorboard: bool = False
    progress: bool = True
    cuda_graphs: bool = True

    def __post_init__(self):
        get_config(self.model)  # raises ValueError naming the registered models
        if isinstance(self.merge, dict):
            object.__setattr__(self, "merge", MergeConfig.from_dict(self.merge))
        if self.merge is None:
            object.__setattr__(self, "merge", MergeConfig())
        if not isinstance(self.merge, MergeConfig):
            raise ValueError(f"merge must be a MergeConfig or its dict, got {type(self.merge).__name__}")
        _choice("amp", self.amp, AMP_CHOICES)
        _choice("mixup_mode", self.mixup_mode, MIXUP_MODES)
        positive = dict(epochs=self.epochs, batch_size=self.batch_size, accum_steps=self.accum_steps,
                        repeated_aug=self.repeated_aug)
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("lr", "min_lr", "warmup_lr", "weight_decay", "warmup_epochs", "alpha", "mixup", "cutmix",
                     "workers", "save_every_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("drop_path", "smoothing", "reprob", "mixup_prob", "mixup_switch_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay!r}")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise ValueError(f"clip_grad must be > 0 (or None to disable), got {self.clip_grad!r}")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1, got {self.eval_batch_size!r}")
        if self.alpha > 0 and self.checkpoint is None and self.teacher is None:
            raise ValueError("alpha > 0 distils from a teacher: give a checkpoint (or teacher), or set alpha=0 "
                             "to train from scratch without one")
        if self.mixup_active and self.batch_size % 2:
            raise ValueError(f"mixup/cutmix needs an even batch_size, got {self.batch_size}")

    # ------------------------------------------------------------------ presets and (de)serialisation
    @classmethod
    def paper(cls, model: str, **overrides) -> "TrainConfig":
        """The official recipe for ``model`` (see :data:`PAPER_SETTINGS` and :data:`PAPER_DEVIATIONS`):
        merge config from :meth:`MergeConfig.paper`, epochs and EMA from the model's registry entry."""
        entry = get_config(model).paper_merge
        settings = dict(PAPER_SETTINGS, merge=MergeConfig.paper(model), ema=bool(entry.get("model_ema", False)))
        if "epochs" in entry:
            settings["epochs"] = int(entry["epochs"])
        settings.update(overrides)
        return cls(model=model, **settings)

    @property
    def mixup_active(self) -> bool:
        return (self.mixup > 0 or self.cutmix > 0) and self.mixup_prob > 0

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["merge"] = self.merge.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown} (checkpoint from another rmeeto version?)")
        return cls(**d)


# ============================================================================================ loss
class DistillationLoss(nn.Module):
    """``base(student, targets) + alpha * KL(p_teacher || p_student)`` with T = 1 and batch-mean reduction.

    student_logits, teacher_logits: [batch, classes] (scored in float32); targets: [batch] class indices or
    [batch, classes] soft targets (mixup). ``teacher_logits=None`` (or alpha = 0) leaves only the base loss.
    Returns (total, {"cls": base term, "kd": KL term}) with the parts detached.
    """

    def __init__(self, base: nn.Module, alpha: float = 0.5):
        super().__init__()
        self.base = base
        self.alpha = float(alpha)

    @staticmethod
    def kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return F.kl_div(
            F.log_softmax(student_logits.float(), dim=-1),
            F.log_softmax(teacher_logits.float(), dim=-1),
            reduction="batchmean",
            log_target=True,
        )

    def forward(self, student_logits, targets, teacher_logits=None):
        cls_loss = self.base(student_logits.float(), targets)
        if teacher_logits is None or self.alpha == 0:
            return cls_loss, {"cls": cls_loss.detach(), "kd": torch.zeros_like(cls_loss).detach()}
        kd = self.kl(student_logits, teacher_logits)
        return cls_loss + self.alpha * kd, {"cls": cls_loss.detach(), "kd": kd.detach()}


class TeacherForward:
    """The frozen teacher's forward for distillation: no_grad, autocast at the training dtype (off for
    float32), and on CUDA (unless ``graph=False``) replayed from one CUDA graph per input shape (the teacher
    never changes, so its ~800 kernels become one launch with no per-op host work). ``RMEETO_TEACHER_GRAPH=0``
    runs it eagerly.
    Returns logits the caller owns (a copy of the graph's output buffer)."""

    def __init__(self, model: nn.Module, amp_dtype: torch.dtype, graph: bool = True):
        from rmeeto.fast import GraphedForward

        self.model = model.eval().requires_grad_(False)
        self.amp_dtype = amp_dtype
        self.graphed = None
        if graph and next(model.parameters()).is_cuda and os.environ.get("RMEETO_TEACHER_GRAPH", "1") != "0":
            self.graphed = GraphedForward(model, autocast_dtype=None if amp_dtype == torch.float32 else amp_dtype)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.graphed is not None:
            return self.graphed(images).clone()
        with torch.autocast(images.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype != torch.float32):
            return self.model(images)


class StudentGraph:
    """The student's forward and backward replayed from CUDA graphs (``torch.cuda.make_graphed_callables``),
    captured at the first training-mode call for that batch shape; other shapes (a short last batch) and
    eval mode run eagerly. Same kernels as the eager step, including drop path's random draws (graph-safe
    RNG); what goes is the host work of ~3,000 launches per step, which leaves an H200 idle for a quarter of
    a Vim-S step. Single process only (DDP's gradient hooks stay eager)."""

    def __init__(self, model: nn.Module, amp_dtype: torch.dtype):
        self.model = model
        self.amp_dtype = amp_dtype
        self.eager_forward = model.forward  # bound before graphing replaces ``model.forward``
        self.shape: Optional[torch.Size] = None

    def _capture(self, images: torch.Tensor) -> None:
        import inspect

        kw = {}
        if "capture_error_mode" in inspect.signature(torch.cuda.make_graphed_callables).parameters:
            kw["capture_error_mode"] = "thread_local"  # a DataLoader's pin-memory thread may call CUDA meanwhile
        enabled = self.amp_dtype != torch.float32
        with torch.autocast("cuda", dtype=self.amp_dtype, enabled=enabled, cache_enabled=False):
            torch.cuda.make_graphed_callables(self.model, (images.detach().clone(),), num_warmup_iters=3,
                                              allow_unused_input=True, **kw)
        self.shape = images.shape

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.model.training and self.shape is None:
            self._capture(images)
        if self.model.training and images.shape == self.shape:
            return self.model(images)
        return self.eager_forward(images)

    def __getattr__(self, name):  # train(), eval(), parameters() ... of the wrapped model
        return getattr(self.model, name)


def distillation_forward(student: nn.Module, teacher: Optional[TeacherForward], criterion: DistillationLoss,
                         images: torch.Tensor, targets: torch.Tensor, amp_dtype: torch.dtype):
    """The forward half of one re-training step: the teacher's logits (:class:`TeacherForward`), the student's
    under autocast (off for float32), and the distillation loss -> (loss, parts). The training loop and the
    training-step benchmark both call this, so the benchmark times what the loop runs."""
    teacher_logits = teacher(images) if teacher is not None else None
    with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32):
        logits = student(images)
        return criterion(logits, targets, teacher_logits)


def build_criterion(config: TrainConfig) -> DistillationLoss:
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if config.mixup_active:
        base: nn.Module = SoftTargetCrossEntropy()  # mixup already folds the smoothing into the soft targets
    elif config.smoothing > 0:
        base = LabelSmoothingCrossEntropy(smoothing=config.smoothing)
    else:
        base = nn.CrossEntropyLoss()
    return DistillationLoss(base, config.alpha)


# ============================================================================================ data
class ResumableSampler(Sampler):
    """Wraps a distributed sampler (``DistributedSampler`` or timm's ``RepeatAugSampler``, both deterministic
    given the epoch) so an epoch can start after its first ``start`` samples, and tags every index with a seed.

    Yields ``(dataset_index, sample_seed)``: the seed is a function of (seed, epoch, global position in the
    epoch), where the global position of this rank's j-th sample is ``rank + j * world`` (how both wrapped
    samplers interleave ranks). Augmentation seeded by it is the same whether the epoch is run in one go, resumed
    after a kill, run by any number of loader workers, or (for the same global batch) by 1 or N processes.
    """

    def __init__(self, inner: Sampler, *, seed: int, rank: int = 0, world: int = 1):
        self.inner, self.seed, self.rank, self.world = inner, int(seed), rank, world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = int(epoch), int(start)
        self.inner.set_epoch(epoch)

    def _sample_seed(self, position: int) -> int:
        return (self.seed * 1_000_003 + self.epoch) * 100_000_007 + position

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for j, index in enumerate(self.inner):
            if j >= self.start:
                yield int(index), self._sample_seed(self.rank + j * self.world)

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.start)


class _SeededDataset(Dataset):
    """Calls ``dataset[index]`` with python/numpy/torch RNGs seeded by the sampler's per-sample seed, and puts
    the caller's RNG states back afterwards (with ``workers=0`` this runs in the training process)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        if torch.utils.data.get_worker_info() is not None:  # a loader worker: its RNG state is nobody else's
            self._seed(seed)
            return self.dataset[index]
        py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
        try:
            self._seed(seed)
            return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            torch.set_rng_state(torch_state)

    @staticmethod
    def _seed(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed would also touch CUDA


class _ShardSampler(Sampler):
    """Evaluation sharding without padding: rank r takes indices r, r + world, ... (every image scored once)."""

    def __init__(self, length: int, rank: int, world: int):
        self.indices = list(range(rank, length, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def _build_data(config: TrainConfig, rank: int, world: int, device: torch.device):
    """Datasets, loaders and the resumable train sampler. Raises TrainError for unusable data."""
    from torch.utils.data import DistributedSampler

    from rmeeto import data as rdata

    mcfg = get_config(config.model)
    img_size = mcfg.arch.img_size
    try:
        n_cls = mcfg.arch.num_classes
        train_set = rdata.build_dataset(config.data, "train", img_size=img_size, mean=mcfg.mean, std=mcfg.std,
                                        train_aug=config.train_aug, num_classes=n_cls)
        val_set = rdata.build_dataset(config.data, "val", img_size=img_size, mean=mcfg.mean, std=mcfg.std,
                                      train_aug=False, crop_pct=mcfg.crop_pct, num_classes=n_cls)
    except (OSError, ValueError) as exc:
        raise TrainError(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__) from None
    if config.train_aug and isinstance(train_set, rdata.ImageFolderDataset):
        # the folder's default training transform with this run's RandAugment policy and erasing probability
        train_set.transform = rdata.train_transform(img_size, mcfg.mean, mcfg.std, auto_augment=config.auto_augment,
                                                    re_prob=config.reprob)
    global_batch = config.batch_size * world
    if len(train_set) < global_batch * config.accum_steps:
        raise TrainError(f"the training set has {len(train_set)} images, fewer than one optimizer step "
                         f"({config.batch_size} x {world} process(es) x {config.accum_steps} accumulation)")
    if len(val_set) == 0:
        raise TrainError(f"the validation split of {config.data} is empty")
    if config.repeated_aug > 1:
        from timm.data.distributed_sampler import RepeatAugSampler

        inner: Sampler = RepeatAugSampler(train_set, num_replicas=world, rank=rank, shuffle=True,
                                          num_repeats=config.repeated_aug)
    else:
        inner = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=config.seed)
    sampler = ResumableSampler(inner, seed=config.seed, rank=rank, world=world)
    common = dict(num_workers=config.workers, collate_fn=rdata.collate_skip_none, pin_memory=device.type == "cuda",
                  persistent_workers=config.workers > 0)
    train_loader = DataLoader(
        _SeededDataset(train_set), batch_size=config.batch_size, sampler=sampler, drop_last=True,
        # a private generator: creating the loader iterator must not consume the global RNG (resume exactness)
        generator=torch.Generator().manual_seed(config.seed), **common,
    )
    val_loader = DataLoader(val_set, batch_size=config.eval_batch_size or 2 * config.batch_size,
                            sampler=_ShardSampler(len(val_set), rank, world), **common)
    return train_set, val_set, sampler, train_loader, val_loader


class _CountSkips:
    """Iterate ``loader`` while recording the unreadable images its batches dropped in ``log`` (a SkipLog)."""

    def __init__(self, loader, log):
        self.loader, self.log = loader, log

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            self.log.update(batch)
            yield batch


# ============================================================================================ helpers
def _init_distributed(device_arg: str) -> tuple[int, int, int, bool]:
    """(rank, world, local_rank, we_initialised). Under torchrun the env vars are set; else one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), False
        return 0, 1, 0, False
    use_cuda = torch.cuda.is_available() and device_arg in ("auto", "cuda")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), local_rank, True


def _rng_state(device: torch.device) -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


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


def _read_resume(path: Path) -> dict:
    from rmeeto.checkpoint import CheckpointError, read_checkpoint

    try:
        ckpt = read_checkpoint(path)
    except CheckpointError as exc:
        raise TrainError(str(exc)) from None
    for key in ("config", "epoch", "step_in_epoch", "optimizer"):
        if key not in ckpt:
            raise TrainError(f"{path} is not an rmeeto training checkpoint (no {key!r} entry); use it as "
                             "--checkpoint to start a new run from its weights")
    return ckpt


def _load_weights(model: nn.Module, path: str, use_ema: bool, what: str) -> None:
    from rmeeto.checkpoint import CheckpointError, load_checkpoint

    try:
        load_checkpoint(model, path, use_ema=use_ema, verbose=False)
    except CheckpointError as exc:
        raise TrainError(f"{what}: {exc}") from None


class _SignalCatcher:
    """Turns SIGINT/SIGTERM into a flag checked between optimizer steps (so the loop can save and exit)."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:  # second Ctrl-C: stop right now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def _format_table(history: list[dict]) -> str:
    cols = [("epoch", "{:d}"), ("train_loss", "{:.4f}"), ("top1", "{:.2f}"), ("top5", "{:.2f}"),
            ("lr", "{:.2e}"), ("images_per_s", "{:.1f}"), ("seconds", "{:.1f}")]
    if any("top1_ema" in h for h in history):
        cols.insert(4, ("top1_ema", "{:.2f}"))
    rows = [[c for c, _ in cols]]
    for h in history:
        rows.append([fmt.format(h[c]) if h.get(c) is not None else "-" for c, fmt in cols])
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ============================================================================================ the loop
def train(config: TrainConfig, *, resume: Optional[str] = None) -> dict:
    """Train ``config`` (see the module docstring). ``resume``: None, ``"auto"`` (``out/last.pth`` if present)
    or a checkpoint path; a resumed run takes its settings from the checkpoint (only the runtime fields
    ``out``, ``device``, ``workers``, ``progress``, ``tensorboard`` and ``save_every_steps`` may change).

    Returns ``{"status": "finished" | "interrupted", "history": [per-epoch dicts], "final": last epoch's
    dict, "best_top1", "best_epoch", "seconds", "out", "config"}``. Raises :class:`TrainError` for bad input
    (before any work) and :class:`NonFiniteLossError` when the loss stops being finite.
    """
    rank, world, local_rank, own_group = _init_distributed(config.device)
    try:
        return _train(config, resume, rank, world, local_rank)
    finally:
        if own_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(config: TrainConfig, resume: Optional[str], rank: int, world: int, local_rank: int) -> dict:
    from tqdm.auto import tqdm

    from rmeeto import data as rdata
    from rmeeto.evaluate import evaluate

    t_start = time.perf_counter()
    master = rank == 0
    distributed = world > 1

    def log(msg: str) -> None:
        if master:
            tqdm.write(msg, file=sys.stderr)

    # ---------------------------------------------------------------- resume: settings come from the file
    resume_path = find_resume_checkpoint(resume, config.out)
    ckpt: Optional[dict] = None
    if resume_path is not None:
        ckpt = _read_resume(resume_path)
        saved = TrainConfig.from_dict(ckpt["config"])
        changed = [f.name for f in dataclasses.fields(TrainConfig)
                   if f.name not in RUNTIME_FIELDS and getattr(saved, f.name) != getattr(config, f.name)]
        if changed:
            log(f"resume: using the settings stored in {resume_path} (ignoring new values of {', '.join(changed)})")
        config = dataclasses.replace(saved, **{k: getattr(config, k) for k in RUNTIME_FIELDS})

    try:
        device = resolve_device(config.device, local_rank if world > 1 else None)
        amp_dtype = resolve_dtype(config.amp, device)
    except ValueError as exc:
        raise TrainError(f"--device {config.device} / --amp {config.amp}: {exc}") from None
    out = Path(config.out) if config.out is not None else None
    if out is not None:
        inputs = {Path(p).resolve() for p in (config.checkpoint, config.teacher) if p}
        for name in ("last.pth", "best.pth"):
            if (out / name).resolve() in inputs:
                raise TrainError(f"--out would overwrite the input checkpoint {out / name}; choose another folder")
    if config.tensorboard and master:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TrainError("--tensorboard needs the tensorboard package: pip install tensorboard") from None

    # ---------------------------------------------------------------- data (fails fast on bad paths)
    _seed_all(config.seed)
    train_set, val_set, sampler, train_loader, val_loader = _build_data(config, rank, world, device)
    steps_per_epoch = len(sampler.inner) // config.batch_size // config.accum_steps  # optimizer steps
    batches_per_epoch = steps_per_epoch * config.accum_steps

    # ---------------------------------------------------------------- models
    # same seed on every rank so from-scratch weights agree (DDP also broadcasts rank 0's at wrap time)
    _seed_all(config.seed)
    model = create_model(config.model, drop_path_rate=config.drop_path)
    if config.checkpoint is not None and ckpt is None:
        _load_weights(model, config.checkpoint, config.use_ema_weights, "--checkpoint")
    apply_merge(model, config.merge)
    teacher = None
    if config.alpha > 0:
        teacher = create_model(config.model)
        _load_weights(teacher, config.teacher or config.checkpoint, config.use_ema_weights and not config.teacher,
                      "teacher")
        teacher = TeacherForward(teacher.eval().requires_grad_(False).to(device), amp_dtype,
                                 graph=config.cuda_graphs)
    model.to(device)
    ema = None
    if config.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=config.ema_decay)

    # ---------------------------------------------------------------- optimisation
    scaled_lr = config.lr * config.batch_size * config.accum_steps * world / 512.0
    if config.wd_exempt:
        from timm.optim import param_groups_weight_decay

        params = param_groups_weight_decay(model, config.weight_decay, no_weight_decay_list=model.no_weight_decay())
    else:
        params = [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": config.weight_decay}]
    optimizer = torch.optim.AdamW(params, lr=scaled_lr, betas=(0.9, 0.999), eps=1e-8,
                                  weight_decay=config.weight_decay, fused=device.type == "cuda")
    from timm.scheduler import CosineLRScheduler

    total_steps = config.epochs * steps_per_epoch
    warmup_steps = min(int(round(config.warmup_epochs * steps_per_epoch)), total_steps - 1)
    scheduler = CosineLRScheduler(
        optimizer, t_initial=max(1, total_steps - warmup_steps), lr_min=config.min_lr, warmup_t=warmup_steps,
        warmup_lr_init=config.warmup_lr, warmup_prefix=True, t_in_epochs=False,
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    criterion = build_criterion(config)
    mixup_fn = None
    if config.mixup_active:
        from timm.data import Mixup

        mixup_fn = Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, prob=config.mixup_prob,
                         switch_prob=config.mixup_switch_prob, mode=config.mixup_mode,
                         label_smoothing=config.smoothing, num_classes=model.num_classes)

    # ---------------------------------------------------------------- state (fresh or resumed)
    start_epoch, start_batch, global_step = 0, 0, 0
    best_top1, best_epoch = -1.0, -1
    history: list[dict] = []
    partial = {"loss_sum": 0.0, "loss_count": 0, "images": 0, "seconds": 0.0}
    _seed_all(config.seed + rank)
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["lr_scheduler"])
            if ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            if ema is not None:
                ema.module.load_state_dict(ckpt["model_ema"])
        except (RuntimeError, KeyError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise TrainError(f"cannot resume from {resume_path}: {first}") from None
        start_epoch, start_batch = int(ckpt["epoch"]), int(ckpt["step_in_epoch"])
        global_step = int(ckpt["global_step"])
        best_top1, best_epoch = float(ckpt["best_top1"]), int(ckpt["best_epoch"])
        history = list(ckpt.get("history", []))
        partial = dict(ckpt.get("partial", partial))
        states = ckpt.get("rng", [])
        if len(states) == world:
            _set_rng_state(states[rank], device)
        else:
            log(f"resume: the checkpoint was written by {len(states)} process(es), this run has {world}; "
                "the data order is kept but random augmentation streams differ")
        log(f"resumed from {resume_path} at epoch {start_epoch} batch {start_batch} (step {global_step})")

    train_model: nn.Module = model
    if config.cuda_graphs and device.type == "cuda" and not distributed and os.environ.get("RMEETO_TRAIN_GRAPH", "1") != "0":
        train_model = StudentGraph(model, amp_dtype)
    if distributed:
        # merging chooses indices without gradients, but every parameter is still used: no unused-param search
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=False
        )

    writer = None
    if out is not None and master:
        out.mkdir(parents=True, exist_ok=True)
        # the log is rebuilt from the checkpoint's history, so a resumed run never repeats or loses a line
        with open(out / "log.jsonl", "w") as f:
            for h in history:
                f.write(json.dumps(h) + "\n")
        if config.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out / "tensorboard"))

    def checkpoint_state(epoch: int, step_in_epoch: int) -> dict:
        rng = _rng_state(device)
        if distributed:
            gathered: list = [None] * world
            dist.all_gather_object(gathered, rng)
            rng_all = gathered
        else:
            rng_all = [rng]
        return {
            "model": model.state_dict(),
            "model_ema": ema.module.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "global_step": global_step,
            "best_top1": best_top1,
            "best_epoch": best_epoch,
            "history": history,
            "partial": dict(partial),
            "rng": rng_all,
            "config": config.to_dict(),
            "model_name": config.model,
            "merge_config": config.merge.to_dict(),
        }

    def check_weights(epoch: int, step_in_epoch: int) -> None:
        # a finite loss can still come with an inf/NaN gradient; never let such weights replace a good file
        norms = torch._foreach_norm([p.detach() for p in model.parameters()])
        if not bool(torch.isfinite(torch.stack(norms)).all()):
            raise NonFiniteLossError(
                f"non-finite weights after epoch {epoch} step {step_in_epoch}; stopped without saving"
                + (f", {out / 'last.pth'} is the last good checkpoint" if (out / "last.pth").exists() else "")
            )

    def save_last(epoch: int, step_in_epoch: int) -> None:
        if out is None:
            return
        check_weights(epoch, step_in_epoch)
        state = checkpoint_state(epoch, step_in_epoch)  # collective under DDP: every rank calls it
        if master:
            from rmeeto.checkpoint import save_checkpoint

            state = {k: v for k, v in state.items() if v is not None}
            save_checkpoint(state, out / "last.pth")

    # ---------------------------------------------------------------- loop
    show = config.progress and master and sys.stderr.isatty()  # as evaluate(): no \r-spam in log files
    bar = tqdm(total=total_steps, initial=global_step, desc="train", unit="step", disable=not show,
               dynamic_ncols=True, file=sys.stderr)
    # test hooks (see the module docstring): slow every step down / poison the loss at one optimizer step
    debug_sleep = float(os.environ.get("RMEETO_DEBUG_STEP_SLEEP", "0") or 0)
    debug_nan_step = int(os.environ.get("RMEETO_DEBUG_NAN_AT_STEP", "-1") or -1)
    status = "finished"
    catcher = _SignalCatcher()
    with catcher:
        for epoch in range(start_epoch, config.epochs):
            first_batch = start_batch if epoch == start_epoch else 0
            if first_batch == 0:
                partial = {"loss_sum": 0.0, "loss_count": 0, "images": 0, "seconds": 0.0}
            sampler.set_epoch(epoch, first_batch * config.batch_size)
            train_model.train()
            t_epoch = time.perf_counter()
            seconds_before = partial["seconds"]
            batch_idx = first_batch
            stop = False
            skips = rdata.SkipLog()
            skips.paths.update(partial.get("skipped", {}))  # files already skipped earlier in a resumed epoch
            bar.set_description(f"epoch {epoch + 1}/{config.epochs}")
            for batch in train_loader:
                if batch_idx >= batches_per_epoch:
                    break
                micro = batch_idx % config.accum_steps
                last_micro = micro == config.accum_steps - 1
                if micro == 0:
                    scheduler.step_update(num_updates=global_step)  # lr of this step is a function of the step
                skips.update(batch)
                valid = batch is not None
                loss = None
                if valid:
                    images, targets = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
                    if mixup_fn is not None and images.shape[0] % 2:  # a corrupt image left the batch odd
                        images, targets = images[:-1], targets[:-1]
                    if mixup_fn is not None:
                        images, targets = mixup_fn(images, targets)
                    sync = contextlib.nullcontext()
                    if distributed and not last_micro:
                        sync = train_model.no_sync()
                    with sync:
                        loss, parts = distillation_forward(train_model, teacher, criterion, images, targets, amp_dtype)
                    if global_step == debug_nan_step:
                        loss = loss * float("nan")
                # agree across ranks on the loss, on skipping an empty batch and on a stop signal (one all-reduce)
                flags = torch.tensor(
                    [loss.detach().float().item() if valid else 0.0, 0.0 if valid else 1.0,
                     1.0 if catcher.signum is not None else 0.0], dtype=torch.float64, device=device)
                if distributed:
                    dist.all_reduce(flags)
                loss_value = flags[0].item() / world
                if flags[1].item() == 0:
                    if not math.isfinite(loss_value):
                        bar.close()
                        where = f"{out / 'last.pth'}" if out is not None and (out / "last.pth").exists() else None
                        raise NonFiniteLossError(
                            f"non-finite loss at epoch {epoch} step {batch_idx} (loss={loss_value}); stopped "
                            + (f"with the last good checkpoint {where} left intact" if where
                               else "before writing any checkpoint")
                        )
                    scaler.scale(loss / config.accum_steps).backward()
                    partial["loss_sum"] += loss_value
                    partial["loss_count"] += 1
                    partial["images"] += images.shape[0] * world
                # else: some rank's batch had no readable image; every rank skips this micro-batch together
                batch_idx += 1
                if not last_micro:
                    continue
                if config.clip_grad is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                global_step += 1
                if ema is not None:
                    ema.update(model, step=global_step)
                if debug_sleep:
                    time.sleep(debug_sleep)
                elapsed = seconds_before + time.perf_counter() - t_epoch
                partial["seconds"] = elapsed
                partial["skipped"] = dict(skips.paths)
                if show:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                                    img_s=f"{partial['images'] / max(elapsed, 1e-9):.0f}")
                if writer is not None:
                    writer.add_scalar("train/loss", loss_value, global_step)
                    writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], global_step)
                if flags[2].item() > 0:
                    stop = True
                    break
                if config.save_every_steps and global_step % config.save_every_steps == 0 \
                        and batch_idx < batches_per_epoch:
                    save_last(epoch, batch_idx)
            if stop:
                save_last(epoch, batch_idx)
                name = signal.Signals(catcher.signum).name if catcher.signum else "a signal on another rank"
                where = f"; saved {out / 'last.pth'} (continue with --resume auto)" if out is not None else ""
                log(f"stopped by {name} at epoch {epoch} step {batch_idx}{where}")
                status = "interrupted"
                break

            # ------------------------------------------------------------ end of epoch: eval, log, save
            train_seconds = partial["seconds"]
            val = evaluate(model, _CountSkips(val_loader, skips), device=device, amp_dtype=amp_dtype,
                           progress=config.progress, desc="val")
            record = {
                "epoch": epoch,
                "train_loss": partial["loss_sum"] / max(partial["loss_count"], 1),
                "top1": val["top1"], "top5": val["top5"], "val_loss": val["loss"],
                "lr": optimizer.param_groups[0]["lr"],
                "images_per_s": partial["images"] / max(train_seconds, 1e-9),
                "seconds": train_seconds + val["seconds"],
                "skipped_images": skips.count,
            }
            if distributed:
                count = torch.tensor([skips.count], dtype=torch.float64, device=device)
                dist.all_reduce(count)
                record["skipped_images"] = int(count.item())
            score = val["top1"]
            if ema is not None:
                val_ema = evaluate(ema.module, val_loader, device=device, amp_dtype=amp_dtype,
                                   progress=config.progress, desc="val (ema)")
                record.update(top1_ema=val_ema["top1"], top5_ema=val_ema["top5"])
                score = val_ema["top1"]  # the release keeps the EMA model as its best
            is_best = score > best_top1
            if is_best:
                best_top1, best_epoch = score, epoch
            history.append(record)
            if master:
                log(f"epoch {epoch + 1}/{config.epochs}: train loss {record['train_loss']:.4f}, val top1 "
                    f"{record['top1']:.2f} top5 {record['top5']:.2f}"
                    + (f" (ema {record['top1_ema']:.2f})" if ema is not None else "")
                    + f", {record['images_per_s']:.0f} img/s, {record['seconds']:.1f}s")
                if out is not None:
                    with open(out / "log.jsonl", "a") as f:
                        f.write(json.dumps(record) + "\n")
                if writer is not None:
                    for k in ("train_loss", "top1", "top5", "val_loss"):
                        writer.add_scalar(f"epoch/{k}", record[k], epoch)
            partial = {"loss_sum": 0.0, "loss_count": 0, "images": 0, "seconds": 0.0}
            save_last(epoch + 1, 0)
            if is_best and out is not None and master:
                from rmeeto.checkpoint import save_checkpoint

                best = {"model": model.state_dict(), "epoch": epoch, "top1": score, "config": config.to_dict(),
                        "model_name": config.model, "merge_config": config.merge.to_dict()}
                if ema is not None:
                    best["model_ema"] = ema.module.state_dict()
                save_checkpoint(best, out / "best.pth")
    bar.close()
    if writer is not None:
        writer.close()
    if master and history and status == "finished":
        log("\n" + _format_table(history))
    return {
        "status": status,
        "signal": int(catcher.signum) if catcher.signum is not None else None,
        "history": history,
        "final": history[-1] if history else None,
        "best_top1": best_top1 if best_epoch >= 0 else None,
        "best_epoch": best_epoch if best_epoch >= 0 else None,
        "seconds": time.perf_counter() - t_start,
        "out": str(out) if out is not None else None,
        "config": config,
        "model": model,
        "ema": ema.module if ema is not None else None,
    }

"""Settings of a (re-)training run: :class:`TrainConfig`, the paper preset and where it differs from the release.

Every checkpoint the loop writes stores ``TrainConfig.to_dict()``, so ``--resume`` rebuilds the run from it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from rmeeto.data import SUBSET_MODES
from rmeeto.gpu_data import PIPELINES
from rmeeto.merge import MergeConfig
from rmeeto.models import get_config
from rmeeto.runtime import DTYPES, check_seed

__all__ = ["TrainConfig", "TrainError", "NonFiniteLossError", "PAPER_SETTINGS", "VIDEO_PAPER_SETTINGS",
           "PAPER_DEVIATIONS", "AMP_CHOICES",
           "MIXUP_MODES", "RUNTIME_FIELDS"]

# The official re-training recipe (SPEC section 4), as TrainConfig fields. ``epochs`` comes from the model's
# registry entry (Ti 30, S/B 15) and ``ema`` is on for the models whose entry asks for it (Vim-B).
PAPER_SETTINGS: dict[str, Any] = dict(
    lr=2e-5, min_lr=1e-6, batch_size=128, weight_decay=0.05, wd_exempt=False, warmup_epochs=0.0, drop_path=0.1,
    mixup=0.8, cutmix=1.0, mixup_prob=1.0, mixup_switch_prob=0.5, mixup_mode="batch", smoothing=0.1,
    auto_augment="rand-m9-mstd0.5-inc1", reprob=0.25, repeated_aug=3, alpha=0.5, clip_grad=None,
    ema_decay=0.99996,
)

# The official VideoMamba Kinetics-400 re-training recipe (SPEC section 10), for the ``_f8`` video models:
# 4 GPUs x 32 videos x accumulation 2 x 2 clips per video = 512 clips per step at lr 2e-5 per 256 clips, i.e. the
# 4e-5 run; here lr is per 512 clips, so lr=4e-5 with batch 32, accumulation 2 and repeated_aug 2 on 4 processes
# reproduces it and other process counts scale linearly. No distillation by default (alpha 0; --alpha > 0
# distils from the unmerged checkpoint). Layer decay 0.75 in effect scales only cls/pos/patch embeddings.
VIDEO_PAPER_SETTINGS: dict[str, Any] = dict(
    lr=4e-5, min_lr=2e-6, warmup_lr=2e-6, warmup_epochs=5.0, batch_size=32, accum_steps=2, weight_decay=0.1,
    wd_exempt=True, layer_decay=0.75, drop_path=0.1, mixup=0.8, cutmix=1.0, mixup_prob=1.0, mixup_switch_prob=0.5,
    mixup_mode="batch", smoothing=0.1, auto_augment="rand-m5-n2-mstd0.25-inc1", reprob=0.25, repeated_aug=2,
    alpha=0.0, clip_grad=None, amp="auto", ema=False,
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

AMP_CHOICES = ("auto", *sorted(DTYPES))  # rmeeto.runtime's dtype names: auto, bf16, fp16, fp32
MIXUP_MODES = ("batch", "pair", "elem")
RUNTIME_FIELDS = ("out", "device", "workers", "progress", "tensorboard", "save_every_steps", "cuda_graphs",
                  "pipeline", "ddp_graphs")  # free on resume


class TrainError(RuntimeError):
    """A user-facing setup problem (bad path, empty data set, unusable checkpoint...): one line, before any work."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped without writing a checkpoint after it."""


def _choice(name: str, value: Any, valid) -> None:
    if value not in valid:
        raise ValueError(f"{name}={value!r} is not valid; choose from {', '.join(map(repr, valid))}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a (re-)training run depends on. Saved in every checkpoint it writes.

    Model and data
        model: registered model name.  data: ``"digits"`` (embedded) or an image folder with train/ and val/.
        checkpoint: initial weights of the student and, unless ``teacher`` is given, of the teacher; None trains
        from scratch.  use_ema_weights: take the checkpoint's ``model_ema`` entry (the Vim-B file).
        merge: the student's :class:`MergeConfig` (the default merges nothing).
        classes: the class names that number the labels of every split (None = the training folders, sorted);
        a folder not in the list is an error.  num_classes: width of the classifier to build (None = the
        registered model's); a checkpoint whose head has another width gets a new, freshly initialised head.
        data_fraction / data_seed / data_subset: train on a deterministic subset of the training split
        (:func:`rmeeto.data.subset_indices`: "balanced" = the same fraction of every class, at least one each;
        "uniform" = a plain random sample, as the release's ``random.sample``); subset_val: subset the
        validation split the same way (the release does; off by default, so scores stay comparable).
    Optimisation
        epochs; batch_size (per process); accum_steps (micro-batches per optimizer step);
        lr: base learning rate per 512 images, scaled by the global batch (batch_size * accum_steps * world / 512);
        min_lr (not scaled, as in the release); warmup_epochs (may be fractional) from warmup_lr;
        weight_decay, wd_exempt (no decay for 1-D params, biases and ``model.no_weight_decay()``: A_log, D,
        pos_embed, cls_token; for VideoMamba video models the embeddings only); clip_grad (max grad norm,
        None = off); drop_path (student's stochastic depth); layer_decay (None = off; d scales the lr of
        cls_token, pos_embed and patch_embed by d ** (depth + 1), as the official video recipe in effect does).
        Video models: data is a clip folder (``train.csv``/``val.csv``, see :mod:`rmeeto.video`), batch_size
        counts videos and each yields ``repeated_aug`` clips into the same batch, so the lr scaling counts
        ``batch_size * repeated_aug`` clips per process.
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
        and backward and the teacher's forward from CUDA graphs: same arithmetic and random draws, no per-op
        host work; captured while the loader starts, leaving the RNG states as they were, so a resumed run is
        bit-identical to an uninterrupted one with graphs too); max_bad_fraction: the run stops with an error
        when more than this fraction of the training images is unreadable (default 0.2), and always when an
        epoch had none readable;
        ddp_graphs: under DDP on CUDA (with cuda_graphs on), also replay the
        student's forward and backward from CUDA graphs, the gradient all-reduce running after the graphed
        backward (on by default; measured on two H200s it keeps the per-GPU rate of one GPU, where eager DDP lost a
        third; off: the eager DDP step); pipeline: the input pipeline, ``"auto"`` (the GPU one on CUDA only with
        fewer than 4 loader workers per GPU: see :func:`rmeeto.gpu_data.resolve_pipeline`), ``"cpu"`` or ``"gpu"`` (nvJPEG + batched augmentation) (on a CPU device the batched pipeline runs on CPU tensors, for tests). ``pipeline`` may
        change on resume (it is a runtime field, as ``device`` which ``auto`` follows); the two pipelines draw
        different random streams from the same per-sample seeds, so a resume that switches pipelines continues
        with the same distributions but is not bit-identical to an uninterrupted run.
    """

    model: str
    data: str = "digits"
    classes: Optional[tuple[str, ...]] = None
    num_classes: Optional[int] = None
    data_fraction: float = 1.0
    data_seed: int = 0
    data_subset: str = "balanced"
    subset_val: bool = False
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
    layer_decay: Optional[float] = None
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
    max_bad_fraction: float = 0.2
    ddp_graphs: bool = True
    pipeline: str = "auto"

    def __post_init__(self):
        get_config(self.model)  # raises ValueError naming the registered models
        if isinstance(self.merge, dict):
            object.__setattr__(self, "merge", MergeConfig.from_dict(self.merge))
        if self.merge is None:
            object.__setattr__(self, "merge", MergeConfig())
        if not isinstance(self.merge, MergeConfig):
            raise ValueError(f"merge must be a MergeConfig or its dict, got {type(self.merge).__name__}")
        if self.classes is not None:  # a list after a round trip through a checkpoint's JSON/pickle
            object.__setattr__(self, "classes", tuple(self.classes))
            if not self.classes or not all(isinstance(c, str) and c for c in self.classes):
                raise ValueError("classes must be a non-empty list of class names")
            if len(set(self.classes)) != len(self.classes):
                raise ValueError("classes lists a class twice")
        if self.num_classes is not None and (isinstance(self.num_classes, bool)
                                             or not isinstance(self.num_classes, int) or self.num_classes < 1):
            raise ValueError(f"num_classes must be an integer >= 1, got {self.num_classes!r}")
        _choice("amp", self.amp, AMP_CHOICES)
        _choice("mixup_mode", self.mixup_mode, MIXUP_MODES)
        _choice("pipeline", self.pipeline, PIPELINES)
        positive = dict(epochs=self.epochs, batch_size=self.batch_size, accum_steps=self.accum_steps,
                        repeated_aug=self.repeated_aug)
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("lr", "min_lr", "warmup_lr", "weight_decay", "warmup_epochs", "alpha", "mixup", "cutmix",
                     "workers", "save_every_steps"):
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):  # NaN fails both
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)!r}")
        for name in ("reprob", "mixup_prob", "mixup_switch_prob", "max_bad_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        for name in ("drop_path", "smoothing"):  # 1 would leave no signal: every block dropped, uniform targets
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay!r}")
        if self.clip_grad is not None and not (self.clip_grad > 0 and math.isfinite(self.clip_grad)):
            raise ValueError(f"clip_grad must be a finite number > 0 (or None to disable), got {self.clip_grad!r}")
        if not 0.0 < self.data_fraction <= 1.0:
            raise ValueError(f"data_fraction must be in (0, 1], got {self.data_fraction!r}")
        _choice("data_subset", self.data_subset, SUBSET_MODES)
        check_seed("data_seed", self.data_seed)
        check_seed("seed", self.seed)
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1] (or None to disable), got {self.layer_decay!r}")
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
        """The official recipe for ``model`` (see :data:`PAPER_SETTINGS` and :data:`PAPER_DEVIATIONS`; video
        models :data:`VIDEO_PAPER_SETTINGS`): merge config from :meth:`MergeConfig.paper`, epochs and EMA from
        the model's registry entry."""
        cfg = get_config(model)
        entry = cfg.paper_merge
        base = VIDEO_PAPER_SETTINGS if getattr(cfg.arch, "num_frames", None) is not None else PAPER_SETTINGS
        settings = dict(base, merge=MergeConfig.paper(model), ema=bool(entry.get("model_ema", False)))
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


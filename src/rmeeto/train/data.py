"""Training data: the resumable, per-sample-seeded sampler and the loaders built on it.

The data sets themselves (the embedded digits, image folders, transforms, skipping unreadable files) live in
:mod:`rmeeto.data`; this module only decides *which* sample each rank sees at each position of an epoch and
with which random seed, so an epoch can be resumed mid-way and reproduce the uninterrupted run exactly.
"""

from __future__ import annotations

import random
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from rmeeto import data as rdata
from rmeeto import gpu_data
from rmeeto import video as rvideo
from rmeeto.models import get_config
from rmeeto.train.config import TrainConfig, TrainError
from rmeeto.train.distributed import Ranks

__all__ = ["ignore_stop_signals", "NoReadableImage", "collate_counting_skips", "ResumableSampler", "TrainData", "build_data",
           "build_mixup", "ClipMixup", "CountSkips", "is_video", "clips_per_video", "train_batch_shape"]


def ignore_stop_signals(worker_id: int = 0, then=None) -> None:
    """A DataLoader ``worker_init_fn``: workers ignore SIGINT/SIGTERM. Preemption (Slurm, Kubernetes) and Ctrl-C
    signal the whole process group; a worker killed by it takes the main process down with a traceback before
    it can save, while the main process alone deciding when to stop saves at the current step. ``then``: a
    further worker_init_fn to call (compose with ``functools.partial(ignore_stop_signals, then=fn)``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if then is not None:
        then(worker_id)


class NoReadableImage:
    """What the training loader yields for a batch whose every image was unreadable: no tensors, but the
    dropped files in ``skipped`` (``collate_skip_none`` returns None and would lose them from the count)."""

    def __init__(self, skipped=()):
        self.skipped = tuple(skipped)

    def __reduce__(self):  # crosses DataLoader worker queues
        return type(self), (self.skipped,)


def collate_counting_skips(samples):
    """``rmeeto.data.collate_skip_none``, but an all-unreadable batch is a :class:`NoReadableImage`."""
    batch = rdata.collate_skip_none(samples)
    if batch is None:
        return NoReadableImage(s for s in samples if isinstance(s, rdata.SkippedSample))
    return batch


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


@dataclass
class TrainData:
    """The loaders of one run. An epoch is ``batches_per_epoch`` micro-batches of ``batch_size`` per rank
    (``steps_per_epoch`` optimizer steps of ``accum_steps`` micro-batches; a short last batch is dropped).
    ``pipeline``: ``"cpu"`` (PIL in the loader workers) or ``"gpu"`` (the loaders are
    :class:`~rmeeto.gpu_data.DeviceLoader` s yielding batches already on the device)."""

    train_set: Dataset
    val_set: Dataset
    sampler: ResumableSampler
    train_loader: DataLoader
    val_loader: DataLoader
    steps_per_epoch: int
    batches_per_epoch: int
    pipeline: str = "cpu"
    classes: Optional[tuple[str, ...]] = None  # an image folder's class names, in label order (None otherwise)


def is_video(model: str) -> bool:
    """Whether the registered ``model`` takes clips (its data is a clip folder, see :mod:`rmeeto.video`)."""
    return getattr(get_config(model).arch, "num_frames", None) is not None


def clips_per_video(config: TrainConfig) -> int:
    """Training samples one dataset item yields: ``repeated_aug`` for a video model (the official repeated
    sampling: that many independently augmented clips of one decoded video, side by side in the same batch, so
    a batch of ``batch_size`` videos holds ``batch_size * repeated_aug`` clips), else 1 (images repeat across
    ranks through timm's RepeatAugSampler and a batch holds ``batch_size`` images)."""
    return config.repeated_aug if is_video(config.model) else 1


def train_batch_shape(config: TrainConfig) -> tuple[int, ...]:
    """The shape of a full training micro-batch: ``batch_size`` (times :func:`clips_per_video`) inputs of the
    model's ``input_size``; what the CUDA graphs are captured for before the first batch arrives."""
    return (config.batch_size * clips_per_video(config), *get_config(config.model).input_size)


def _clip_datasets(config: TrainConfig) -> tuple[Dataset, Dataset]:
    """Train and val clips of the clip folder ``config.data`` (``train.csv``/``val.csv`` or ``.txt``): train
    items are ``repeated_aug`` clips augmented as the official recipe (RandAugment ``auto_augment`` with one
    draw per clip, a random resized crop and flip shared by all frames, erasing ``reprob`` as one cube); with
    ``train_aug`` off only the crop stays random (full area), no RandAugment, flip or erasing."""
    ClipTrainTransform, build_clip_dataset = rvideo.ClipTrainTransform, rvideo.build_clip_dataset

    mcfg = get_config(config.model)
    size = mcfg.arch.img_size
    if config.train_aug:
        transform = ClipTrainTransform(size, auto_augment=config.auto_augment, erase_prob=config.reprob,
                                       mean=mcfg.mean, std=mcfg.std)
    else:
        transform = ClipTrainTransform(size, auto_augment=None, scale=(1.0, 1.0), flip=False, erase_prob=0.0,
                                       mean=mcfg.mean, std=mcfg.std)
    try:
        train_set = build_clip_dataset(config.data, "train", mcfg.arch, num_sample=config.repeated_aug,
                                       train_transform=transform, mean=mcfg.mean, std=mcfg.std)
        val_set = build_clip_dataset(config.data, "val", mcfg.arch, mean=mcfg.mean, std=mcfg.std)
    except (OSError, ValueError) as exc:
        raise TrainError(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__) from None
    too_big = max(train_set.targets + val_set.targets)
    if too_big >= mcfg.arch.num_classes:
        raise TrainError(f"{config.data} has label {too_big}, but {config.model} has {mcfg.arch.num_classes} classes")
    return train_set, val_set


def _datasets(config: TrainConfig) -> tuple[Dataset, Dataset]:
    """The train and val splits of ``config.data`` with the model's preprocessing. Raises TrainError."""
    if is_video(config.model):
        return _clip_datasets(config)
    mcfg = get_config(config.model)
    img_size = mcfg.arch.img_size
    try:
        n_cls = config.num_classes or mcfg.arch.num_classes
        train_set = rdata.build_dataset(config.data, "train", img_size=img_size, mean=mcfg.mean, std=mcfg.std,
                                        train_aug=config.train_aug, num_classes=n_cls, classes=config.classes)
        val_set = rdata.build_dataset(config.data, "val", img_size=img_size, mean=mcfg.mean, std=mcfg.std,
                                      train_aug=False, crop_pct=mcfg.crop_pct, num_classes=n_cls,
                                      classes=getattr(train_set, "classes", None))
    except (OSError, ValueError) as exc:
        raise TrainError(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__) from None
    n_data = len(getattr(train_set, "classes", ()))
    if n_data > n_cls:  # labels >= the head's width: a device-side assert or silently wrong scores later
        raise TrainError(f"{config.data} has {n_data} classes but {config.model}'s head has {n_cls}; "
                         f"give --num-classes {n_data} to train a new head of that width, or use data with at "
                         "most that many classes")
    if config.train_aug and isinstance(train_set, rdata.ImageFolderDataset):
        # the folder's default training transform with this run's RandAugment policy and erasing probability
        train_set.transform = rdata.train_transform(img_size, mcfg.mean, mcfg.std, auto_augment=config.auto_augment,
                                                    re_prob=config.reprob)
    return train_set, val_set


def _subsets(config: TrainConfig, train_set: Dataset, val_set: Dataset) -> tuple[Dataset, Dataset]:
    """``config.data_fraction`` of the training split (and of the validation split with ``subset_val``), a
    deterministic sample of :func:`rmeeto.data.subset_dataset`; the datasets unchanged at fraction 1."""
    if config.data_fraction >= 1.0:
        return train_set, val_set
    try:
        train_set = rdata.subset_dataset(train_set, config.data_fraction, config.data_seed, config.data_subset)
        if config.subset_val:
            val_set = rdata.subset_dataset(val_set, config.data_fraction, config.data_seed, config.data_subset)
    except ValueError as exc:
        raise TrainError(f"--data-fraction {config.data_fraction}: {exc}") from None
    return train_set, val_set


def _train_sampler(config: TrainConfig, train_set: Dataset, ranks: Ranks) -> ResumableSampler:
    """Shuffled, sharded over ranks (with ``repeated_aug`` > 1 on images: timm's repeated-augmentation sampler;
    clips repeat inside the dataset instead)."""
    if config.repeated_aug > 1 and not is_video(config.model):
        from timm.data.distributed_sampler import RepeatAugSampler  # timm is imported only to train

        inner: Sampler = RepeatAugSampler(train_set, num_replicas=ranks.world, rank=ranks.rank, shuffle=True,
                                          num_repeats=config.repeated_aug)
    else:
        inner = DistributedSampler(train_set, num_replicas=ranks.world, rank=ranks.rank, shuffle=True,
                                   seed=config.seed)
    return ResumableSampler(inner, seed=config.seed, rank=ranks.rank, world=ranks.world)


def _gpu_datasets(config: TrainConfig, device: torch.device):
    """The train and val :class:`~rmeeto.gpu_data.GpuPipeline` s of the image folder ``config.data``."""
    mcfg = get_config(config.model)
    common = dict(img_size=mcfg.arch.img_size, mean=mcfg.mean, std=mcfg.std, device=device, seed=config.seed)
    try:
        root = Path(config.data)
        folders = [rdata._split_folder(root, split) for split in ("train", "val")]
        if not config.train_aug:  # as the CPU path: training images get the evaluation transform
            train = gpu_data.build_gpu_pipeline(folders[0], train=False, crop_pct=mcfg.crop_pct, **common)
        else:
            train = gpu_data.build_gpu_pipeline(folders[0], train=True, auto_augment=config.auto_augment,
                                                re_prob=config.reprob, **common)
        val = gpu_data.build_gpu_pipeline(folders[1], train=False, crop_pct=mcfg.crop_pct, **common)
    except (OSError, ValueError) as exc:
        raise TrainError(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__) from None
    return train, val


def build_data(config: TrainConfig, ranks: Ranks, device: torch.device) -> TrainData:
    """Datasets, loaders and the resumable train sampler. Raises TrainError for unusable data.

    With the GPU pipeline (``config.pipeline`` resolving to ``"gpu"``) the workers only read files: the
    dataset takes the sampler's ``(index, seed)`` keys itself (no :class:`_SeededDataset`: nothing in the
    workers is random) and the device decodes and augments batches up to 2 ahead of the loop, in a thread on its
    own stream of this rank's device (:class:`~rmeeto.gpu_data.DeviceLoader`)."""
    if is_video(config.model):  # clips are decoded by PyAV in the workers: the JPEG GPU pipeline does not apply
        if config.pipeline == "gpu":
            raise TrainError("--pipeline gpu decodes JPEG images; video clips use the CPU (PyAV) pipeline")
        pipeline = "cpu"
    else:
        try:
            pipeline = gpu_data.resolve_pipeline(config.pipeline, device, config.data, config.workers)
        except ValueError as exc:
            raise TrainError(f"--pipeline {config.pipeline}: {exc}") from None
    if pipeline == "gpu":
        train_pipe, val_pipe = _gpu_datasets(config, device)
        train_set, val_set = train_pipe.dataset, val_pipe.dataset
    else:
        train_set, val_set = _datasets(config)
    folder_classes = getattr(train_set, "classes", None) if isinstance(
        train_set, (rdata.ImageFolderDataset, gpu_data.EncodedImageFolder)) else None
    train_set, val_set = _subsets(config, train_set, val_set)
    if len(train_set) < config.batch_size * ranks.world * config.accum_steps:
        raise TrainError(f"the training set has {len(train_set)} images, fewer than one optimizer step "
                         f"({config.batch_size} x {ranks.world} process(es) x {config.accum_steps} accumulation)")
    if len(val_set) == 0:
        raise TrainError(f"the validation split of {config.data} is empty")
    sampler = _train_sampler(config, train_set, ranks)
    gpu = pipeline == "gpu"
    if gpu:
        collate = train_collate = gpu_data.collate_encoded
    elif is_video(config.model):
        collate = train_collate = rvideo.collate_clips  # flattens the repeated clips of a video
    else:
        collate = train_collate = collate_counting_skips  # validation reads through CountSkips
    common = dict(num_workers=config.workers, collate_fn=collate,
                  # the GPU pipeline's batches are lists of variable-size byte tensors: nothing worth pinning
                  pin_memory=device.type == "cuda" and not gpu, persistent_workers=config.workers > 0,
                  worker_init_fn=ignore_stop_signals)
    train_loader = DataLoader(
        train_set if gpu else _SeededDataset(train_set), batch_size=config.batch_size, sampler=sampler,
        drop_last=True, **dict(common, collate_fn=train_collate),
        # a private generator: creating the loader iterator must not consume the global RNG (resume exactness)
        generator=torch.Generator().manual_seed(config.seed),
    )
    val_loader = DataLoader(val_set, batch_size=config.eval_batch_size or 2 * config.batch_size,
                            sampler=_ShardSampler(len(val_set), ranks.rank, ranks.world), **common)
    if gpu:
        train_loader = gpu_data.DeviceLoader(train_loader, train_pipe.transform)
        val_loader = gpu_data.DeviceLoader(val_loader, val_pipe.transform)
    steps_per_epoch = len(sampler.inner) // config.batch_size // config.accum_steps
    return TrainData(train_set, val_set, sampler, train_loader, val_loader, steps_per_epoch,
                     batches_per_epoch=steps_per_epoch * config.accum_steps, pipeline=pipeline,
                     classes=tuple(folder_classes) if folder_classes else None)


def build_mixup(config: TrainConfig, num_classes: int):
    """timm's batch mixup/cutmix (with label smoothing folded into the soft targets), or None when off; for a
    video model wrapped in :class:`ClipMixup`."""
    if not config.mixup_active:
        return None
    from timm.data import Mixup

    wrap = ClipMixup if is_video(config.model) else (lambda mixup: mixup)
    return wrap(Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, prob=config.mixup_prob,
                 switch_prob=config.mixup_switch_prob, mode=config.mixup_mode, label_smoothing=config.smoothing,
                 num_classes=num_classes))


class ClipMixup:
    """timm's Mixup for clips: its cutmix cuts the box out of dims 2 and 3 (``x[:, :, y0:y1, x0:x1]``), which
    on ``[batch, C, T, H, W]`` would be time and height. Clips are viewed as ``[batch, C * T, H, W]``, so one
    box is cut through every frame (a tube) and mixup blends whole clips; returns ([batch, C, T, H, W], soft
    targets)."""

    def __init__(self, mixup):
        self.mixup = mixup

    def __call__(self, x: torch.Tensor, target: torch.Tensor):
        if x.dim() != 5:
            return self.mixup(x, target)
        b, c, t, h, w = x.shape
        mixed, target = self.mixup(x.reshape(b, c * t, h, w), target)
        return mixed.reshape(b, c, t, h, w), target


class CountSkips:
    """Iterate ``loader`` while recording the unreadable images its batches dropped in ``log`` (a
    :class:`rmeeto.data.SkipLog`); a :class:`NoReadableImage` batch is counted, then yielded as None."""

    def __init__(self, loader, log: rdata.SkipLog):
        self.loader, self.log = loader, log

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            self.log.update(batch)
            yield None if isinstance(batch, NoReadableImage) else batch  # what evaluate() skips

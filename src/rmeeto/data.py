"""Datasets and transforms: the embedded digits set (no download) and ImageNet-style image folders.

    train = build_dataset("digits", "train", img_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, train_aug=True)
    val = build_dataset("/data/imagenet", "val", img_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    loader = DataLoader(val, batch_size=128, num_workers=8, collate_fn=collate_skip_none)

Unreadable images (corrupt or truncated files) in a folder dataset do not stop a run: the dataset returns a
:class:`SkippedSample` in their place and logs one warning line per file, and :func:`collate_skip_none` drops
those samples. The batches it returns unpack as ``images, labels`` and carry the dropped samples in
``batch.skipped`` (a :class:`SkipLog` counts them over a run); a batch with no readable image at all comes
back as ``None``. Nothing is counted in global state, so this works the same in DataLoader workers.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset, default_collate

from rmeeto._typing import PathLike, Tensor
from rmeeto.models import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "DataError",
    "DigitsDataset",
    "SyntheticDataset",
    "ImageFolderDataset",
    "SkippedSample",
    "Batch",
    "SkipLog",
    "collate_skip_none",
    "digits_pil_images",
    "eval_transform",
    "train_transform",
    "build_dataset",
    "dataset_labels",
    "subset_indices",
    "subset_dataset",
    "SUBSET_MODES",
    "IMG_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "SPLITS",
    "check_image_size",
    "read_rgb",
]

_logger = logging.getLogger(__name__)

DIGITS_NORM = (0.5, 0.5, 0.5)  # mean = std, as the vim_digits_patch4_32 config
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # as torchvision
SPLITS = ("train", "val")
# Decoding limit, well below PIL's own (Image.MAX_IMAGE_PIXELS, ~89 MP, only warns; twice that raises): a PNG
# of a few KB can declare a canvas that decodes to gigabytes, in every loader worker at once. 40 MP (e.g.
# 8000 x 5000) is above any photo of an ImageNet-style set; larger files are skipped as unreadable.
MAX_IMAGE_PIXELS = 40_000_000
_WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # how PIL opens 16-bit grey PNG/TIFF files


class DataError(ValueError):
    """A dataset that cannot be used as given. The message is one line naming the path."""


# --------------------------------------------------------------------------------------------- digits


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[Tensor, Tensor]:
    """scikit-learn's bundled 8x8 digits: images [1797, 8, 8] float32 in [0, 1], labels [1797] int64."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).float() / 16.0  # pixel values are 0..16
    return images, torch.from_numpy(digits.target).long()


def _digits_split(split: str, val_fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a stratified train/val split (the same for every call with the same arguments)."""
    from sklearn.model_selection import train_test_split

    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    _, labels = _digits_arrays()
    train, val = train_test_split(
        np.arange(len(labels)), test_size=val_fraction, stratify=labels.numpy(), random_state=seed
    )
    return np.sort(train if split == "train" else val)


def _upscale(images: Tensor, img_size: int) -> Tensor:
    """[n, h, w] in [0, 1] -> [n, 1, img_size, img_size] by bilinear interpolation."""
    return F.interpolate(images[:, None], size=(img_size, img_size), mode="bilinear", align_corners=False).clamp(0, 1)


class DigitsDataset(Dataset):
    """The embedded digits set: 1797 8x8 grey images of 10 classes, upscaled to ``img_size`` (bilinear), grey
    replicated to 3 channels, normalised with ``mean`` / ``std``. Items: (image [3, img_size, img_size]
    float32, label int).

    The split is stratified and fixed by ``seed`` (default 80 % train / 20 % val). ``augment`` shifts each image
    by up to ``max_shift`` pixels in each direction (filling with background), a light augmentation for
    training."""

    classes = [str(d) for d in range(10)]

    def __init__(
        self,
        split: str = "train",
        img_size: int = 32,
        mean: Sequence[float] = DIGITS_NORM,
        std: Sequence[float] = DIGITS_NORM,
        augment: bool = False,
        max_shift: int = 2,
        val_fraction: float = 0.2,
        seed: int = 0,
    ):
        images, labels = _digits_arrays()
        self.split = split
        self.indices = _digits_split(split, val_fraction, seed)
        self.images = _upscale(images[self.indices], img_size)  # [n, 1, S, S] in [0, 1]
        self.labels = labels[self.indices]
        self.targets = self.labels.tolist()
        self.img_size = img_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.augment = augment
        self.max_shift = max_shift

    def __len__(self) -> int:
        return len(self.indices)

    def _shift(self, x: Tensor) -> Tensor:
        s = self.max_shift
        dy, dx = torch.randint(-s, s + 1, (2,)).tolist()
        padded = F.pad(x, (s, s, s, s))  # background is 0
        return padded[:, s + dy : s + dy + self.img_size, s + dx : s + dx + self.img_size]

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        x = self.images[i]
        if self.augment and self.max_shift > 0:
            x = self._shift(x)
        x = (x.expand(3, -1, -1) - self.mean) / self.std
        return x, int(self.labels[i])

    def pil_image(self, i: int) -> Image.Image:
        """Item ``i`` as an RGB image (upscaled, not normalised, not augmented), for display."""
        pixels = (self.images[i, 0] * 255).round().to(torch.uint8).numpy()
        return Image.fromarray(pixels).convert("RGB")


def digits_pil_images(
    split: str = "val", img_size: int = 32, indices: Optional[Sequence[int]] = None
) -> list[tuple[Image.Image, int]]:
    """(RGB image, label) pairs of the digits ``split`` at ``img_size`` for visualisation; ``indices`` index
    into the split (default: all of it). Same pixels as :class:`DigitsDataset` before normalisation."""
    ds = DigitsDataset(split, img_size)
    return [(ds.pil_image(i), int(ds.labels[i])) for i in (range(len(ds)) if indices is None else indices)]


# --------------------------------------------------------------------------------------------- image folders


class SkippedSample(NamedTuple):
    """Returned by :class:`ImageFolderDataset` instead of (image, label) when a file cannot be decoded."""

    path: str
    reason: str


class Batch(tuple):
    """``(images [batch, C, H, W], labels [batch])`` that also carries, in ``skipped``, the
    :class:`SkippedSample` s dropped while building it. Unpacks, indexes and pins memory like a plain pair."""

    def __new__(cls, images: Tensor, labels: Tensor, skipped: Sequence[SkippedSample] = ()):
        batch = super().__new__(cls, (images, labels))
        batch.skipped = tuple(skipped)
        return batch

    @property
    def images(self) -> Tensor:
        return self[0]

    @property
    def labels(self) -> Tensor:
        return self[1]

    def __reduce__(self):  # keep ``skipped`` across DataLoader worker queues
        return type(self), (self[0], self[1], self.skipped)

    def pin_memory(self, device=None) -> "Batch":  # DataLoader(pin_memory=True) calls this
        return type(self)(self[0].pin_memory(), self[1].pin_memory(), self.skipped)


def collate_skip_none(samples: Sequence[Any]) -> Optional[Batch]:
    """Collate (image, label) samples, dropping ``None`` and :class:`SkippedSample` entries.

    Returns a :class:`Batch` (``images, labels = batch``; dropped samples in ``batch.skipped``), or ``None``
    when no sample of the batch was readable (loops skip ``None`` batches)."""
    good = [s for s in samples if s is not None and not isinstance(s, SkippedSample)]
    skipped = [s for s in samples if isinstance(s, SkippedSample)]
    if not good:
        return None
    images, labels = default_collate(good)
    return Batch(images, labels, skipped)


class SkipLog:
    """Counts the distinct unreadable files seen over a run, from the batches themselves:
    ``log.update(batch)`` for each batch (``None`` and plain batches are fine), then ``log.count``."""

    def __init__(self) -> None:
        self.paths: dict[str, str] = {}  # path -> reason

    def update(self, batch: Any) -> None:
        for s in getattr(batch, "skipped", ()):
            self.paths.setdefault(s.path, s.reason)

    @property
    def count(self) -> int:
        return len(self.paths)

    def summary(self) -> str:
        if not self.paths:
            return "no unreadable images"
        shown = ", ".join(list(self.paths)[:5]) + (", ..." if self.count > 5 else "")
        return f"skipped {self.count} unreadable image{'s' * (self.count != 1)} ({shown})"


def check_image_size(img: Image.Image) -> None:
    """ValueError if an opened (not yet decoded) image has more than :data:`MAX_IMAGE_PIXELS` pixels."""
    width, height = img.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(f"{width} x {height} pixels is over the decoding limit of {MAX_IMAGE_PIXELS} pixels "
                         "(rmeeto.data.MAX_IMAGE_PIXELS; a decompression bomb or a huge scan)")


def read_rgb(source: Any) -> Image.Image:
    """Decode ``source`` (a path or binary file object) to an RGB PIL image, as both data pipelines do.

    The size is checked on the header, before decoding (:func:`check_image_size`). 16-bit grey is scaled to
    8 bits (value >> 8): PIL's own conversion clips every value above 255, turning such images white. Raises
    what the loaders count as unreadable (OSError, ValueError, SyntaxError, DecompressionBombError)."""
    with Image.open(source) as img:
        check_image_size(img)
        if img.mode in _WIDE_GREY_MODES:
            wide = np.asarray(img).astype(np.int64)  # [H, W]; decodes the whole file
            grey = (np.clip(wide, 0, 65535) >> 8).astype(np.uint8)
            return Image.fromarray(grey, "L").convert("RGB")
        return img.convert("RGB")  # decodes the whole file: corrupt or truncated data fails here


def _find_images(folder: Path, extensions: tuple[str, ...]) -> list[str]:
    """Image files under ``folder`` (recursively, hidden files and folders left out), in torchvision's order.
    Links to folders inside it are not followed: a link back to an ancestor would loop, and one to another class
    folder would label that class's images twice (the class folder itself may be a link)."""
    found = []
    for root, _, names in sorted(os.walk(folder, followlinks=False)):
        if any(part.startswith(".") for part in Path(root).relative_to(folder).parts):
            continue  # inside a hidden folder (.ipynb_checkpoints)
        # hidden files are no images: macOS's "._x.jpg" resource forks, editors' backups
        found.extend(os.path.join(root, n) for n in sorted(names)
                     if n.lower().endswith(extensions) and not n.startswith("."))
    return found


class ImageFolderDataset(Dataset):
    """Images in ``root/<class>/<image>`` (class indices in sorted folder-name order, as torchvision's
    ImageFolder). Items: ``(transform(PIL RGB image), label)``, or a :class:`SkippedSample` for a file that cannot
    be decoded (corrupt, truncated, not an image): use :func:`collate_skip_none` as the loader's collate_fn.

    Each unreadable file is logged once per process (one warning line) and the skipped samples travel with
    the batches; the dataset keeps no count of its own, so it behaves the same in DataLoader workers (which
    hold copies of it)."""

    def __init__(self, root: PathLike, transform: Optional[Callable] = None, extensions: Sequence[str] = IMG_EXTENSIONS,
                 classes: Optional[Sequence[str]] = None):
        root = Path(root)
        if not root.exists():
            raise DataError(f"dataset folder {root} does not exist")
        if not root.is_dir():
            raise DataError(f"dataset path {root} is not a folder")
        self.root = root
        self.transform = transform
        self.extensions = tuple(e.lower() for e in extensions)
        # hidden folders (.ipynb_checkpoints, .git, .Trash) are no classes
        present = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
        if not present:
            raise DataError(f"dataset folder {root} holds no class folders (expected {root}/<class>/<image>)")
        # one numbering for every split: a val folder scored with its own numbering would compare labels of
        # different classes whenever the two splits' class sets differ
        self.classes = list(classes) if classes is not None else present
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        unknown = [c for c in present if c not in self.class_to_idx]
        if unknown:
            shown = ", ".join(unknown[:5]) + (f", ... ({len(unknown) - 5} more)" if len(unknown) > 5 else "")
            raise DataError(f"class folder{'s' * (len(unknown) != 1)} in {root} not among the "
                            f"{len(self.classes)} training classes: {shown}")
        real_root = os.path.realpath(root)
        for name in present:  # a class folder that links to the dataset or above would hold every class
            real = os.path.realpath(root / name)
            if real_root == real or real_root.startswith(real.rstrip(os.sep) + os.sep):
                raise DataError(f"class folder {root / name} links to {real}, which contains the dataset "
                                "itself: remove the link")
        self.samples: list[tuple[str, int]] = []
        empty = []
        for name in present:
            index = self.class_to_idx[name]
            files = _find_images(root / name, self.extensions)
            if not files:
                empty.append(name)
            self.samples.extend((f, index) for f in files)
        if empty:
            shown = ", ".join(empty[:5]) + (f", ... ({len(empty) - 5} more)" if len(empty) > 5 else "")
            raise DataError(
                f"class folder{'s' * (len(empty) != 1)} with no images in {root}: {shown} "
                f"(looked for {' '.join(self.extensions)})"
            )
        self.targets = [label for _, label in self.samples]
        self._reported: set[str] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Union[tuple[Any, int], SkippedSample]:
        path, label = self.samples[i]
        try:
            img = read_rgb(path)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            if path not in self._reported:
                self._reported.add(path)
                _logger.warning("skipping unreadable image %s (%s)", path, reason)
            return SkippedSample(path, reason)
        if self.transform is not None:
            img = self.transform(img)
        return img, label


# --------------------------------------------------------------------------------------------- transforms


def eval_transform(
    img_size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    crop_pct: float = 0.875,
) -> Callable:
    """Official evaluation protocol: resize the short side to int(img_size / crop_pct) (bicubic; 256 for 224),
    center-crop img_size, to tensor, normalise. PIL image -> [3, img_size, img_size] float32."""
    from torchvision import transforms as T

    return T.Compose([
        T.Resize(int(img_size / crop_pct), interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(img_size),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def train_transform(
    img_size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    auto_augment: str = "rand-m9-mstd0.5-inc1",
    re_prob: float = 0.25,
    color_jitter: float = 0.3,
) -> Callable:
    """Official (DeiT / Vim) training augmentation: RandomResizedCrop (bicubic), horizontal flip, RandAugment
    ``rand-m9-mstd0.5-inc1``, normalise, RandomErasing (p 0.25, per-pixel noise). As there, inputs of 32 px or
    less use RandomCrop(padding=4) instead of RandomResizedCrop (after resizing the short side to img_size, so
    that larger images work too). PIL image -> [3, img_size, img_size]."""
    from timm.data import create_transform
    from torchvision import transforms as T

    transform = create_transform(
        input_size=img_size, is_training=True, color_jitter=color_jitter, auto_augment=auto_augment,
        interpolation="bicubic", re_prob=re_prob, re_mode="pixel", re_count=1, mean=mean, std=std,
    )
    if img_size <= 32:  # the resize is a no-op for images already at img_size (CIFAR-style data)
        transform.transforms[0] = T.Compose([
            T.Resize(img_size, interpolation=T.InterpolationMode.BICUBIC), T.RandomCrop(img_size, padding=4)
        ])
    return transform


# --------------------------------------------------------------------------------------------- entry point


def _split_folder(root: Path, split: str) -> Path:
    if not root.exists():
        raise DataError(f"dataset {str(root)!r} not found: neither 'digits' nor an existing folder")
    if not root.is_dir():
        raise DataError(f"dataset path {root} is not a folder")
    if (root / split).is_dir():
        return root / split
    present = [s for s in SPLITS if (root / s).is_dir()]
    if present:
        raise DataError(f"dataset folder {root} has no '{split}' subfolder (found: {', '.join(present)})")
    return root  # class folders directly under root


class SyntheticDataset(Dataset):
    """Random images for benchmarks and smoke tests (``--data synthetic``): sample i is a fixed pseudo-random
    [3, img_size, img_size] normal tensor with label i % num_classes, generated on the fly (no decoding, no
    disk), so a training benchmark measures the model rather than the input pipeline."""

    def __init__(self, split: str = "train", img_size: int = 224, num_classes: int = 1000, length: Optional[int] = None):
        self.img_size, self.num_classes = img_size, num_classes
        self.length = length if length is not None else (25_600 if split == "train" else 2_560)
        self.offset = 0 if split == "train" else 10**9
        self.classes = [str(i) for i in range(num_classes)]

    def __len__(self) -> int:
        return self.length

    @property
    def targets(self) -> list[int]:
        return [i % self.num_classes for i in range(self.length)]

    def __getitem__(self, index: int):
        g = torch.Generator().manual_seed(self.offset + index)
        return torch.randn(3, self.img_size, self.img_size, generator=g), index % self.num_classes


def build_dataset(
    name_or_path: PathLike,
    split: str = "train",
    img_size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    train_aug: bool = False,
    crop_pct: float = 0.875,
    num_classes: int = 1000,
    classes: Optional[Sequence[str]] = None,
) -> Dataset:
    """The dataset ``name_or_path`` at ``split`` ("train" or "val").

    "synthetic" is :class:`SyntheticDataset` (random tensors, ``num_classes`` classes, for benchmarks). "digits" is the embedded set (:class:`DigitsDataset`; ``train_aug`` adds random shifts). A path is an image
    folder: ``<path>/<split>/<class>/<image>``, or ``<path>/<class>/<image>`` when it has no train/val
    subfolders; ``train_aug`` selects :func:`train_transform`, otherwise :func:`eval_transform`. ``classes``:
    the class list that numbers the labels (pass the train split's ``classes`` when building val; a folder of
    another class is a DataError); default: the split's own folders, sorted."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if str(name_or_path) == "digits":
        return DigitsDataset(split, img_size, mean, std, augment=train_aug)
    if str(name_or_path) == "synthetic":
        return SyntheticDataset(split, img_size, num_classes=num_classes)
    folder = _split_folder(Path(name_or_path), split)
    transform = train_transform(img_size, mean, std) if train_aug else eval_transform(img_size, mean, std, crop_pct)
    return ImageFolderDataset(folder, transform, classes=classes)


# ============================================================================================ subsets
SUBSET_MODES = ("balanced", "uniform")


def dataset_labels(dataset) -> list[int]:
    """The label of every sample of ``dataset`` without loading an image: its ``targets`` (every dataset here
    has them), looked through ``torch.utils.data.Subset``. ValueError for a dataset without labels."""
    if isinstance(dataset, torch.utils.data.Subset):
        parent = dataset_labels(dataset.dataset)
        return [parent[i] for i in dataset.indices]
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise ValueError(f"{type(dataset).__name__} has no 'targets' (one label per sample): cannot take a subset")
    return [int(t) for t in targets]


def subset_indices(labels_or_dataset, fraction: float, seed: int = 0, mode: str = "balanced") -> list[int]:
    """A deterministic sample of ``fraction`` (0 < fraction <= 1) of a training set, as sorted indices.

    ``labels_or_dataset``: a sequence of integer labels (one per sample) or a dataset (:func:`dataset_labels`).
    mode "balanced": the same fraction of every class, round(fraction * class size), at least one per class,
        so no class disappears (what a re-training on 1% of ImageNet needs); each class is drawn from its own
        generator seeded by (seed, class), so the sample of one class does not depend on the others.
    mode "uniform": round(fraction * N) samples (at least one) drawn uniformly without regard to class (the
        official release's ``random.sample``; a rare class may vanish).
    The same (labels, fraction, seed, mode) always gives the same indices; fraction 1 gives every index.
    """
    if mode not in SUBSET_MODES:
        raise ValueError(f"mode={mode!r} is not valid; choose from {', '.join(map(repr, SUBSET_MODES))}")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be a number in (0, 1], got {fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if isinstance(labels_or_dataset, Dataset):
        labels = np.asarray(dataset_labels(labels_or_dataset), dtype=np.int64)
    else:
        labels = np.asarray(list(labels_or_dataset), dtype=np.int64)
    n = len(labels)
    if n == 0:
        raise ValueError("cannot take a subset of an empty dataset")
    if fraction == 1:
        return list(range(n))
    if mode == "uniform":
        k = max(1, round(fraction * n))
        picked = np.random.default_rng(seed).choice(n, size=k, replace=False)
        return sorted(int(i) for i in picked)
    picked = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        k = max(1, round(fraction * len(members)))
        rng = np.random.default_rng([seed, int(c) & 0xFFFFFFFF])  # per-class stream: classes are independent
        picked.extend(int(i) for i in rng.choice(members, size=k, replace=False))
    return sorted(picked)


def subset_dataset(dataset, fraction: float, seed: int = 0, mode: str = "balanced"):
    """``dataset`` restricted to :func:`subset_indices` (a ``torch.utils.data.Subset`` that keeps ``classes``
    and ``targets``); ``fraction == 1`` returns ``dataset`` itself. Apply it to the training split only: the
    validation set stays whole unless a run asks otherwise (the release also subsets validation)."""
    if fraction == 1:
        return dataset
    indices = subset_indices(dataset, fraction, seed, mode)
    labels = dataset_labels(dataset)
    subset = torch.utils.data.Subset(dataset, indices)
    subset.classes = getattr(dataset, "classes", None)  # callers read the class names off the dataset
    subset.targets = [labels[i] for i in indices]
    return subset

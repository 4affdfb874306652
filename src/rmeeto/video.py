"""Video clips for Kinetics-style classification: list files, decoding, sparse frame sampling, the official
VideoMamba clip augmentation, 12-view testing, and synthetic clips made with PyAV.

    train = VideoClipDataset("k400/train.csv", "k400/train", mode="train", sep=",", num_sample=2)
    test = VideoClipDataset("k400/val.csv", "k400/val", mode="test", sep=",")
    loader = DataLoader(train, batch_size=32, num_workers=8, collate_fn=collate_clips)
    for clips, labels in loader: ...                # clips [2 * 32, 3, 8, 224, 224] (two samples per video)
    stats = evaluate_views(model, DataLoader(test, batch_size=4, collate_fn=collate_clips))  # top1 / top5

Items (``num_frames`` = T = 8, crop S = 224):

- ``mode="train"``: ``(clip [3, T, S, S], label)``; with ``num_sample=n > 1`` a list of n such pairs, each
  augmented independently from one decode (the official repeated sampling); :func:`collate_clips` flattens them.
- ``mode="val"``: ``(clip [3, T, S, S], label)``: segment-middle frames, short side to S, centre crop.
- ``mode="test"``: ``(views [num_clips * num_crops, 3, T, S, S], label)``, view ``v`` = temporal clip
  ``v // num_crops``, spatial crop ``v % num_crops``; all views of a video come from one decode.

Sampling (:func:`sample_frame_indices`, as the official ``VideoClsDataset_sparse._get_seq_frames``): a video of
N frames is cut into T segments of ``seg = (N - 1) / T`` frames; segment i starts at ``round(seg * i)``
(Python/NumPy rounding, half to even). Train draws one frame uniformly from ``[round(seg*i), round(seg*(i+1))]``
(both ends included); test clip k of K takes ``round(seg*i) + int(seg / (K + 1) * (k + 1))``; val is test with
K = 1, k = 0 (``+ int(seg / 2)``, the segment middles). Indices are capped at N - 1, and videos shorter than
T frames repeat frames.

Unreadable videos (missing, corrupt, truncated, no video stream) and videos with fewer than ``min_frames``
decodable frames come back as :class:`rmeeto.data.SkippedSample` (one warning line per file) and the batches of
:func:`collate_clips` carry them in ``batch.skipped``, exactly like the image folders of :mod:`rmeeto.data`, so
a :class:`rmeeto.data.SkipLog` counts them over a run.

Randomness: every item draws from one ``numpy.random.Generator``; with ``seed=None`` it is seeded from torch's
global generator (so ``torch.manual_seed`` and the DataLoader's per-worker seeding make runs repeatable), with an
integer ``seed`` from ``(seed, epoch, index)`` (call :meth:`VideoClipDataset.set_epoch`), so an item is a pure
function of those three numbers. timm's RandAugment reads Python's ``random`` and NumPy's global generator:
those are re-seeded from the item's generator before every frame (the same parameters on all frames) and
restored afterwards, so nothing outside the item sees a change.
"""

from __future__ import annotations

import logging
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from rmeeto._typing import PathLike, Tensor
from rmeeto.data import Batch, DataError, SkipLog, SkippedSample, collate_skip_none
from rmeeto.metrics import sum_over_ranks, topk_hits
from rmeeto.models import IMAGENET_MEAN, IMAGENET_STD
from rmeeto.runtime import autocast

__all__ = [
    "VideoReadError",
    "read_clip_list",
    "sample_frame_indices",
    "VIDEO_BACKENDS",
    "open_video",
    "read_frames",
    "ClipTrainTransform",
    "ClipEvalTransform",
    "VideoClipDataset",
    "collate_clips",
    "find_clip_list",
    "detect_list_sep",
    "build_clip_dataset",
    "is_clip_folder",
    "predict_views",
    "evaluate_views",
    "moving_square_frames",
    "encode_video",
    "write_synthetic_clips",
    "write_synthetic_clip_folder",
    "DIRECTIONS",
    "MODES",
]

_logger = logging.getLogger(__name__)

MODES = ("train", "val", "test")
RAND_AUGMENT = "rand-m5-n2-mstd0.25-inc1"  # the VideoMamba Kinetics fine-tuning recipe


class VideoReadError(Exception):
    """A video that cannot be decoded (or is shorter than needed); the message is one line. Datasets turn it into
    a :class:`SkippedSample`."""


# --------------------------------------------------------------------------------------------- list files


def read_clip_list(list_file: PathLike, root: Optional[PathLike] = None, sep: str = " ") -> list[tuple[str, int]]:
    """``(video path, label)`` pairs of a Kinetics-style list file: one ``path<sep>label`` per line.

    The label is the last field (so with ``sep=" "`` a path may itself hold spaces); relative paths are joined to
    ``root`` (absolute ones are kept); blank lines and lines starting with ``#`` are ignored. A malformed line
    raises :class:`DataError` naming the file and line number."""
    list_file = Path(list_file)
    if not sep:
        raise ValueError("sep must be a non-empty string (e.g. ' ' or ',')")
    if not list_file.is_file():
        raise DataError(f"clip list {list_file} does not exist or is not a file")
    samples = []
    with open(list_file, encoding="utf-8-sig") as f:  # -sig: a leading BOM (Windows editors) is dropped
        for lineno, line in enumerate(f, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            fields = text.rsplit(sep, 1)
            path, label = (fields[0].strip(), fields[1].strip()) if len(fields) == 2 else ("", "")
            if not path or not label.lstrip("-").isdigit() or int(label) < 0:
                raise DataError(
                    f"{list_file}:{lineno}: expected 'path{sep}label' with a non-negative integer label, got {text!r}"
                )
            if root is not None and not os.path.isabs(path):
                path = os.path.join(root, path)
            samples.append((path, int(label)))
    if not samples:
        raise DataError(f"clip list {list_file} lists no videos")
    return samples


# --------------------------------------------------------------------------------------------- sampling


def sample_frame_indices(
    video_length: int,
    num_frames: int = 8,
    mode: str = "train",
    clip_index: int = 0,
    num_clips: int = 4,
    rng: Optional[np.random.Generator] = None,
) -> list[int]:
    """Sparse sampling: ``num_frames`` frame indices (in ``0 .. video_length - 1``, non-decreasing) of one clip.

    ``video_length`` N frames are cut into ``num_frames`` segments of ``seg = (N - 1) / num_frames``; segment i
    spans ``[round(seg * i), round(seg * (i + 1))]`` (round half to even, as NumPy). ``train``: one frame drawn
    uniformly from each span (both ends included; needs ``rng``). ``val``: ``round(seg * i) + int(seg / 2)``.
    ``test``: clip ``clip_index`` of ``num_clips``: ``round(seg * i) + int(seg / (num_clips + 1) * (clip_index
    + 1))``. Every index is capped at N - 1, so videos shorter than ``num_frames`` repeat frames."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if video_length < 1:
        raise ValueError(f"video_length must be >= 1, got {video_length}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    seg = max(0.0, (video_length - 1) / num_frames)
    last = video_length - 1
    starts = [int(round(seg * i)) for i in range(num_frames + 1)]
    if mode == "train":
        if rng is None:
            raise ValueError("train sampling draws random frames: pass rng (a numpy.random.Generator)")
        # integers(low, high) excludes high: +1 makes the segment end inclusive, as random.randint
        return [min(int(rng.integers(starts[i], starts[i + 1] + 1)), last) for i in range(num_frames)]
    if mode == "val":
        clip_index, num_clips = 0, 1
    if not 0 <= clip_index < num_clips:
        raise ValueError(f"clip_index must be in 0..{num_clips - 1}, got {clip_index}")
    offset = int(seg / (num_clips + 1) * (clip_index + 1))
    return [min(starts[i] + offset, last) for i in range(num_frames)]


# --------------------------------------------------------------------------------------------- decoding


class _PyAVReader:
    """Sequential decoding with PyAV up to the last needed frame (Kinetics clips are short, and sparse sampling
    spans the whole clip, so seeking would save little and keyframe seeking is easy to get wrong)."""

    def __init__(self, path: str):
        import av

        self._av = av
        self.path = path
        try:
            self.container = av.open(path)
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise VideoReadError(_reason(exc)) from None
        if not self.container.streams.video:
            self.container.close()
            raise VideoReadError("no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self._started = False  # seek back to the start only for a second pass
        self._length = self._reported_length()

    def _reported_length(self) -> int:
        """Frame count from the container (exact for mp4), else duration x frame rate, else counted."""
        stream = self.stream
        if stream.frames > 0:
            return int(stream.frames)
        rate = stream.average_rate or stream.guessed_rate
        if stream.duration is not None and stream.time_base is not None and rate:
            return int(round(float(stream.duration * stream.time_base * rate)))
        return sum(1 for _ in self._decode())

    def __len__(self) -> int:
        return self._length

    def _decode(self):
        try:
            if self._started:
                self.container.seek(0)
            self._started = True
            yield from self.container.decode(self.stream)
        except (self._av.FFmpegError, OSError, ValueError) as exc:
            raise VideoReadError(_reason(exc)) from None

    def get_frames(self, indices: Sequence[int]) -> np.ndarray:
        """Frames at ``indices`` -> uint8 [len(indices), H, W, 3] (RGB). Raises VideoReadError when the stream
        ends before the last index; ``len(self)`` is then corrected to the frames actually decoded."""
        wanted = set(indices)
        last = max(indices)
        got: dict[int, np.ndarray] = {}
        count = 0
        for count, frame in enumerate(self._decode(), 1):
            if count - 1 in wanted:
                got[count - 1] = frame.to_ndarray(format="rgb24")
            if count - 1 >= last:
                break
        if last not in got:
            self._length = count
            raise VideoReadError(f"stream ended after {count} of {last + 1} needed frames")
        return np.stack([got[i] for i in indices])

    def close(self) -> None:
        self.container.close()


class _DecordReader:
    """decord's VideoReader (the official loader, ``num_threads=1``)."""

    def __init__(self, path: str):
        try:
            import decord
        except ImportError:
            raise ImportError("backend='decord' needs decord: pip install decord (or use backend='pyav')") from None
        self._error = decord.DECORDError
        try:
            self.reader = decord.VideoReader(path, num_threads=1)
        except (decord.DECORDError, OSError, RuntimeError) as exc:
            raise VideoReadError(_reason(exc)) from None

    def __len__(self) -> int:
        return len(self.reader)

    def get_frames(self, indices: Sequence[int]) -> np.ndarray:
        try:
            self.reader.seek(0)
            return self.reader.get_batch(list(indices)).asnumpy()
        except (self._error, OSError, RuntimeError, IndexError) as exc:
            raise VideoReadError(_reason(exc)) from None

    def close(self) -> None:
        del self.reader


VIDEO_BACKENDS: dict[str, Callable[[str], Any]] = {"pyav": _PyAVReader, "decord": _DecordReader}


def _reason(exc: BaseException) -> str:
    return (f"{type(exc).__name__}: {exc}".splitlines() or [type(exc).__name__])[0]


def open_video(path: PathLike, backend: str = "pyav"):
    """A reader of ``path`` with ``len(reader)`` (frames) and ``reader.get_frames(indices)`` -> uint8
    [len(indices), H, W, 3]. Raises VideoReadError for a file that cannot be opened."""
    if backend not in VIDEO_BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; choose from {', '.join(VIDEO_BACKENDS)}")
    if not os.path.isfile(path):
        raise VideoReadError("file not found")
    return VIDEO_BACKENDS[backend](str(path))


def read_frames(
    path: PathLike,
    index_fn: Callable[[int], Sequence[int]],
    backend: str = "pyav",
    min_frames: int = 1,
) -> tuple[np.ndarray, list[int]]:
    """Decode the frames ``index_fn(video_length)`` of ``path`` in one pass.

    Returns ``(frames uint8 [len(indices), H, W, 3], indices)``. When the container overstates its length (a
    truncated file), the indices are drawn again for the true length and decoded again. Raises VideoReadError
    for an unreadable video or one with fewer than ``min_frames`` frames."""
    reader = open_video(path, backend)
    try:
        for _ in range(2):
            length = len(reader)
            if length < max(min_frames, 1):
                raise VideoReadError(f"too short: {length} frames (need at least {max(min_frames, 1)})")
            indices = list(index_fn(length))
            try:
                return reader.get_frames(indices), indices
            except VideoReadError:
                if len(reader) >= length:  # not a short stream: a real decoding error
                    raise
        raise VideoReadError("frame count changed while decoding")
    finally:
        reader.close()


# --------------------------------------------------------------------------------------------- transforms


def _to_float(frames: np.ndarray) -> Tensor:
    """uint8 [T, H, W, 3] -> float32 [T, 3, H, W] in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255)


def _normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """[T, 3, H, W] -> (x - mean) / std per channel."""
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _resize_short_side(x: Tensor, size: int) -> Tensor:
    """[T, C, H, W] -> short side ``size``, long side ``int(size * long / short)`` (bilinear, no antialias, as
    the official cv2 INTER_LINEAR resize)."""
    h, w = x.shape[-2:]
    if min(h, w) == size:
        return x
    new = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    return F.interpolate(x, size=new, mode="bilinear", align_corners=False)


@dataclass(frozen=True)
class ClipEvalTransform:
    """Validation and test views: short side to ``short_side_size`` (bilinear), then ``num_crops`` crops of
    ``crop_size`` (1: the centre; 3: left/centre/right along the long side, top/centre/bottom for portrait
    video, as the official ``spatial_start = int(k * (long - crop) / (num_crops - 1))``), normalised.

    ``uint8 [T, H, W, 3] -> [num_crops, 3, T, crop_size, crop_size]``."""

    crop_size: int = 224
    short_side_size: int = 224
    num_crops: int = 1
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD

    def __post_init__(self):
        if self.num_crops < 1:
            raise ValueError(f"num_crops must be >= 1, got {self.num_crops}")
        if self.short_side_size < self.crop_size:
            raise ValueError(f"short_side_size ({self.short_side_size}) must be >= crop_size ({self.crop_size})")

    def __call__(self, frames: np.ndarray) -> Tensor:
        x = _normalize(_resize_short_side(_to_float(frames), self.short_side_size), self.mean, self.std)
        h, w = x.shape[-2:]
        s = self.crop_size
        landscape = w >= h
        long, short = (w, h) if landscape else (h, w)
        across = int(round((short - s) / 2))  # centred on the short side
        if self.num_crops == 1:
            starts = [int(round((long - s) / 2))]
        else:
            step = (long - s) / (self.num_crops - 1)
            starts = [int(k * step) for k in range(self.num_crops)]
        views = [
            x[..., across:across + s, a:a + s] if landscape else x[..., a:a + s, across:across + s] for a in starts
        ]
        return torch.stack(views).transpose(1, 2).contiguous()  # [crops, T, 3, s, s] -> [crops, 3, T, s, s]


def _random_resized_box(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop covering ``scale`` of the area with aspect ratio (log-uniform) in
    ``ratio``; 10 tries, then the largest centred crop within ``ratio`` (torchvision's rule)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@dataclass(frozen=True)
class ClipTrainTransform:
    """The official VideoMamba training augmentation of one clip, every random choice shared by all frames:
    RandAugment ``auto_augment`` (timm; one parameter draw for the clip, on the full-size frames), normalise,
    random resized crop to ``crop_size`` (one box; ``scale``, ``ratio``; bilinear), horizontal flip (p 0.5),
    random erasing with probability ``erase_prob`` as one cube (one box on every frame, per-pixel normal noise;
    the official SlowFast/VideoMAE ``RandomErasing(cube=True)``, 100 tries for a box of 2-33 % of the area,
    aspect 0.3-3.3).

    ``(uint8 [T, H, W, 3], numpy Generator) -> [3, T, crop_size, crop_size]``. ``auto_augment=None`` or ``""``
    turns RandAugment off."""

    crop_size: int = 224
    auto_augment: Optional[str] = RAND_AUGMENT
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (0.75, 1.3333)  # the official values (not 4/3)
    flip: bool = True
    erase_prob: float = 0.25
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD

    def __post_init__(self):
        if not 0.0 <= self.erase_prob <= 1.0:
            raise ValueError(f"erase_prob must be in [0, 1], got {self.erase_prob}")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must be (low, high) with 0 < low <= high, got {self.ratio}")
        if self.auto_augment:
            from PIL import Image
            from timm.data.auto_augment import rand_augment_transform

            # as the official create_random_augment: translations relative to the crop size, bicubic resampling
            hparams = {"translate_const": int(self.crop_size * 0.45), "interpolation": Image.BICUBIC}
            object.__setattr__(self, "_rand_augment", rand_augment_transform(self.auto_augment, hparams))
        else:
            object.__setattr__(self, "_rand_augment", None)

    def _augment_frames(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """RandAugment with one parameter draw for all frames: timm's ops read Python's ``random`` (probability,
        magnitude, sign) and NumPy's global generator (op choice), so both are seeded to the same value before
        each frame, then restored."""
        from PIL import Image

        seed = int(rng.integers(2**32))
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            out = []
            for frame in frames:
                random.seed(seed)
                np.random.seed(seed)
                out.append(np.asarray(self._rand_augment(Image.fromarray(frame))))
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
        return np.stack(out)

    def __call__(self, frames: np.ndarray, rng: np.random.Generator) -> Tensor:
        if self._rand_augment is not None:
            frames = self._augment_frames(frames, rng)
        x = _normalize(_to_float(frames), self.mean, self.std)  # [T, 3, H, W]
        top, left, h, w = _random_resized_box(x.shape[-2], x.shape[-1], self.scale, self.ratio, rng)
        x = F.interpolate(x[..., top:top + h, left:left + w], size=(self.crop_size, self.crop_size),
                          mode="bilinear", align_corners=False)
        if self.flip and rng.random() < 0.5:
            x = x.flip(-1)
        x = x.transpose(0, 1).contiguous()  # [3, T, S, S]
        if self.erase_prob > 0 and rng.random() < self.erase_prob:
            _erase_cube(x, rng)
        return x


def _erase_cube(x: Tensor, rng: np.random.Generator) -> None:
    """Random erasing of one box through all frames of ``x`` [C, T, H, W] (in place): per-pixel N(0, 1) noise."""
    c, t, height, width = x.shape
    log_aspect = (math.log(0.3), math.log(1 / 0.3))
    for _ in range(100):
        target = height * width * rng.uniform(0.02, 1 / 3)
        aspect = math.exp(rng.uniform(*log_aspect))
        h = int(round(math.sqrt(target * aspect)))
        w = int(round(math.sqrt(target / aspect)))
        if w < width and h < height:
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            x[:, :, top:top + h, left:left + w] = torch.from_numpy(rng.standard_normal((c, t, h, w), dtype=np.float32))
            return


# --------------------------------------------------------------------------------------------- dataset


class VideoClipDataset(Dataset):
    """Clips of the videos listed in ``list_file`` (``path<sep>label`` lines, paths relative to ``root``); see
    the module docstring for the items of each ``mode``, the sampling and the skipping of unreadable videos.

    ``num_frames`` frames per clip; ``num_clips`` x ``num_crops`` test views; ``crop_size`` output side;
    ``short_side_size`` the val/test resize; ``num_sample`` augmented clips per decoded video (train);
    ``min_frames`` (default ``num_frames``) the shortest video used: shorter ones are skipped (1 keeps every
    decodable video, as the official loader, repeating frames); ``backend`` a key of :data:`VIDEO_BACKENDS`;
    ``train_transform`` replaces the default :class:`ClipTrainTransform`; ``seed`` see the module docstring."""

    def __init__(
        self,
        list_file: PathLike,
        root: Optional[PathLike] = None,
        mode: str = "train",
        *,
        num_frames: int = 8,
        num_clips: int = 4,
        num_crops: int = 3,
        crop_size: int = 224,
        short_side_size: Optional[int] = None,
        num_sample: int = 1,
        min_frames: Optional[int] = None,
        sep: str = " ",
        backend: str = "pyav",
        train_transform: Optional[ClipTrainTransform] = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        seed: Optional[int] = None,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if backend not in VIDEO_BACKENDS:
            raise ValueError(f"unknown video backend {backend!r}; choose from {', '.join(VIDEO_BACKENDS)}")
        if backend == "decord":
            try:
                import decord  # noqa: F401
            except ImportError:
                raise ImportError("backend='decord' needs decord: pip install decord (or use backend='pyav')") from None
        for name, value in (("num_frames", num_frames), ("num_clips", num_clips), ("num_crops", num_crops),
                            ("num_sample", num_sample), ("crop_size", crop_size)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if root is not None and not Path(root).is_dir():
            raise DataError(f"video folder {root} does not exist or is not a folder")
        self.samples = read_clip_list(list_file, root, sep)
        self.targets = [label for _, label in self.samples]
        self.mode, self.backend = mode, backend
        self.num_frames, self.num_clips, self.num_crops = num_frames, num_clips, num_crops
        self.num_sample = num_sample
        self.min_frames = num_frames if min_frames is None else min_frames
        self.seed, self.epoch = seed, 0
        self.train_transform = train_transform or ClipTrainTransform(crop_size, mean=mean, std=std)
        self.eval_transform = ClipEvalTransform(
            crop_size, short_side_size or crop_size, num_crops if mode == "test" else 1, mean, std
        )
        self._reported: set[str] = set()

    @property
    def num_views(self) -> int:
        """Views per item: num_clips x num_crops in test mode, else 1."""
        return self.num_clips * self.num_crops if self.mode == "test" else 1

    def set_epoch(self, epoch: int) -> None:
        """Draw new training randomness each epoch when ``seed`` is set (a no-op for the draws otherwise)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def _rng(self, index: int) -> np.random.Generator:
        if self.seed is None:
            return np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        return np.random.default_rng([self.seed, self.epoch, index])

    def _indices(self, length: int, rng: np.random.Generator) -> list[int]:
        """All frame indices one item needs, clip after clip (test: num_clips clips of num_frames)."""
        if self.mode == "test":
            return [i for k in range(self.num_clips)
                    for i in sample_frame_indices(length, self.num_frames, "test", k, self.num_clips)]
        return sample_frame_indices(length, self.num_frames, self.mode, rng=rng)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        rng = self._rng(index)
        try:
            frames, _ = read_frames(path, lambda n: self._indices(n, rng), self.backend, self.min_frames)
        except (VideoReadError, OSError) as exc:
            reason = str(exc) if isinstance(exc, VideoReadError) else _reason(exc)
            if path not in self._reported:
                self._reported.add(path)
                _logger.warning("skipping unreadable video %s (%s)", path, reason)
            return SkippedSample(path, reason)
        if self.mode == "train":
            clips = [(self.train_transform(frames, rng), label) for _ in range(self.num_sample)]
            return clips if self.num_sample > 1 else clips[0]
        if self.mode == "val":
            return self.eval_transform(frames)[0], label
        t = self.num_frames
        views = [self.eval_transform(frames[k * t:(k + 1) * t]) for k in range(self.num_clips)]
        return torch.cat(views), label  # [clips * crops, 3, T, S, S], clip-major


def collate_clips(samples: Sequence[Any]) -> Optional[Batch]:
    """:func:`rmeeto.data.collate_skip_none` for clips: lists of repeated samples (``num_sample > 1``) are
    flattened first (the two samples of a video end up next to each other), then unreadable videos dropped.

    Returns a :class:`rmeeto.data.Batch` ``(clips, labels)`` with the dropped videos in ``batch.skipped``
    (clips [batch, 3, T, S, S] or test views [batch, views, 3, T, S, S]), or None when none was readable (as
    ``collate_skip_none``, such a batch's skipped videos then go uncounted)."""
    flat: list[Any] = []
    for s in samples:
        flat.extend(s if isinstance(s, list) else [s])
    return collate_skip_none(flat)  # views were flattened: the image collate applies unchanged


# --------------------------------------------------------------------------------------------- data folders

CLIP_LIST_SUFFIXES = (".csv", ".txt")
LIST_SEPS = ("auto", " ", ",", "\t")


def find_clip_list(folder: PathLike, split: str) -> Path:
    """The list file of ``split`` in a clip data folder: ``folder/<split>.csv`` or ``folder/<split>.txt``; a
    ``test`` split falls back to the ``val`` list (Kinetics tests on its validation videos). Raises DataError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"clip data folder {folder} does not exist or is not a folder")
    for name in ((split, "val") if split == "test" else (split,)):
        for suffix in CLIP_LIST_SUFFIXES:
            if (folder / f"{name}{suffix}").is_file():
                return folder / f"{name}{suffix}"
    wanted = " or ".join(f"{split}{x}" for x in CLIP_LIST_SUFFIXES)
    raise DataError(f"clip data folder {folder} has no {wanted} list file ('path label' lines, paths relative "
                    f"to the folder)")


def detect_list_sep(list_file: PathLike) -> str:
    """The separator of a list file, read off its first entry: ``" "`` if ``path label`` splits there on a
    space (the official Kinetics ``.csv`` files), else ``","`` or a tab. Raises DataError when none fits."""
    with open(list_file, encoding="utf-8-sig") as f:  # -sig: a leading BOM (Windows editors) is dropped
        for line in f:
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            for sep in (" ", ",", "\t"):
                fields = text.rsplit(sep, 1)
                if len(fields) == 2 and fields[0].strip() and fields[1].strip().isdigit():
                    return sep
            raise DataError(f"{list_file}: cannot read {text!r} as a video path and an integer class label "
                            "separated by a space, a comma or a tab ('path label', 'path,label')")
    raise DataError(f"clip list {list_file} lists no videos")


def build_clip_dataset(
    folder: PathLike,
    split: str,
    arch,
    *,
    mode: Optional[str] = None,
    sep: str = "auto",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    **kwargs,
) -> VideoClipDataset:
    """The :class:`VideoClipDataset` of ``split`` ("train", "val" or "test") of a clip data folder (see
    :func:`find_clip_list`; video paths relative to ``folder``), sized for a video model's ``arch``
    (:class:`~rmeeto.models.VimArch`: ``num_frames`` frames, ``img_size`` crops, also the val/test short
    side). ``mode`` defaults to ``split``; ``sep`` "auto" uses :func:`detect_list_sep`; ``kwargs`` go to the
    dataset (``num_sample``, ``train_transform``, ``backend``, ...)."""
    if getattr(arch, "num_frames", None) is None:
        raise ValueError("clip data needs a video model (e.g. videomamba_tiny_patch16_224_f8); this one takes images")
    if sep not in LIST_SEPS:
        raise ValueError(f"list separator {sep!r} is not valid; choose from {', '.join(map(repr, LIST_SEPS))}")
    list_file = find_clip_list(folder, split)
    sep = detect_list_sep(list_file) if sep == "auto" else sep
    return VideoClipDataset(list_file, folder, mode or split, num_frames=arch.num_frames, crop_size=arch.img_size,
                            sep=sep, mean=mean, std=std, **kwargs)


def is_clip_folder(data: Union[str, PathLike, None]) -> bool:
    """Whether ``data`` is a clip data folder (holds a train or val list file, see :func:`find_clip_list`)."""
    if data is None or not Path(data).is_dir():
        return False
    return any((Path(data) / f"{split}{x}").is_file() for split in ("train", "val") for x in CLIP_LIST_SUFFIXES)


# --------------------------------------------------------------------------------------------- multi-view test


@torch.no_grad()
def predict_views(model: nn.Module, views: Tensor, view_chunk: Optional[int] = None) -> Tensor:
    """Softmax averaged over views: ``views [batch, V, 3, T, H, W]`` (or one view, [batch, 3, T, H, W]) ->
    class probabilities [batch, classes] (float32). The model sees ``[batch * V, 3, T, H, W]``, in pieces of
    ``view_chunk`` videos' views when given (to bound memory)."""
    if views.dim() == 5:
        views = views[:, None]
    if views.dim() != 6:
        raise ValueError(f"views must be [batch, views, 3, T, H, W] or [batch, 3, T, H, W], got {tuple(views.shape)}")
    b, v = views.shape[:2]
    chunk = b if view_chunk is None else max(1, view_chunk)
    probs = []
    for start in range(0, b, chunk):
        part = views[start:start + chunk]
        logits = model(part.flatten(0, 1)).float()  # [n * V, classes]
        probs.append(logits.softmax(-1).view(part.shape[0], v, -1).mean(1))
    return torch.cat(probs)


@torch.no_grad()
def evaluate_views(model: nn.Module, loader: Iterable, *, device: Union[str, torch.device] = "cpu",
                   amp_dtype: Optional[torch.dtype] = None, view_chunk: Optional[int] = None) -> dict:
    """Top-1 / top-5 (percent) of view-averaged softmax predictions over ``loader`` (batches of
    :func:`collate_clips`: ``(views [batch, V, 3, T, H, W], labels)``, or ``None``; single clips also work).

    Returns ``top1``, ``top5`` (top-min(5, classes)), ``n`` (videos scored) and ``skipped`` (distinct unreadable
    videos seen on this rank, a :class:`rmeeto.data.SkipLog` count). Under an initialised ``torch.distributed``
    process group the hit counts and ``n`` of all ranks are summed (sharding is the caller's business). The
    model's train/eval mode is restored."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    correct1 = correct5 = n = 0
    skips = SkipLog()
    try:
        for batch in loader:
            skips.update(batch)
            if batch is None:
                continue
            views, labels = batch[0].to(device), batch[1].to(device)
            with autocast(device, amp_dtype):
                probs = predict_views(model, views, view_chunk)
            hits = topk_hits(probs, labels)
            correct1 += int(hits[:, 0].sum())
            correct5 += int(hits.any(-1).sum())
            n += labels.numel()
    finally:
        model.train(was_training)
    if torch.distributed.is_available() and torch.distributed.is_initialized():  # each rank scored its shard
        totals = torch.tensor([correct1, correct5, n], dtype=torch.float64, device=device)
        correct1, correct5, n = (int(v) for v in sum_over_ranks(totals).tolist())
    denom = max(n, 1)
    return {"top1": 100.0 * correct1 / denom, "top5": 100.0 * correct5 / denom, "n": n, "skipped": skips.count}


# --------------------------------------------------------------------------------------------- synthetic clips

DIRECTIONS = ("right", "left", "down", "up")  # label i = DIRECTIONS[i]
_MOVES = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)}  # (dy, dx) per step


def moving_square_frames(
    direction: Union[int, str],
    num_frames: int = 16,
    size: int = 32,
    square: int = 8,
    start: Optional[tuple[int, int]] = None,
    step: int = 1,
    background: int = 32,
    color: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """A ``square`` px square moving ``step`` px per frame towards ``direction`` (name or index in
    :data:`DIRECTIONS`) on a uniform grey frame: uint8 [num_frames, size, size, 3]. ``start`` is the square's
    top-left (y, x) in frame 0 (default: centred across the motion, at the start of its path along it). The
    path must stay inside the frame. Reversing time swaps right/left and down/up, so the label needs order."""
    name = DIRECTIONS[direction] if isinstance(direction, int) else direction
    if name not in _MOVES:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)} or an index, got {direction!r}")
    dy, dx = _MOVES[name]
    travel = step * (num_frames - 1)
    if start is None:
        mid = (size - square) // 2
        begin = lambda d: mid if d == 0 else (0 if d > 0 else size - square)  # noqa: E731
        start = (begin(dy), begin(dx))
    y0, x0 = start
    ends = (y0 + dy * travel, x0 + dx * travel)
    if min(y0, x0, *ends) < 0 or max(y0, x0, *ends) > size - square:
        raise ValueError(f"the square's path from {start} ({name}, {num_frames} frames) leaves the {size} px frame")
    frames = np.full((num_frames, size, size, 3), background, dtype=np.uint8)
    for t in range(num_frames):
        y, x = y0 + dy * step * t, x0 + dx * step * t
        frames[t, y:y + square, x:x + square] = color
    return frames


def _codec() -> str:
    import av

    for name in ("mpeg4", "libx264"):  # mpeg4 (no B-frames, in every PyAV wheel) first
        if name in av.codecs_available:
            return name
    raise RuntimeError("PyAV has neither the mpeg4 nor the libx264 encoder")


def encode_video(path: PathLike, frames: np.ndarray, fps: int = 8, codec: Optional[str] = None) -> None:
    """Write uint8 [T, H, W, 3] RGB frames (H, W even) to ``path`` with PyAV (``codec`` default: mpeg4, else
    libx264), at a high bit rate so decoded pixels stay within a few levels of the input."""
    import av

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"frame height and width must be even (yuv420p), got {frames.shape[1]}x{frames.shape[2]}")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec or _codec(), rate=fps)
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 8_000_000
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())  # flush


def write_synthetic_clips(
    folder: PathLike,
    num_videos: int = 16,
    num_frames: int = 16,
    size: int = 32,
    square: int = 8,
    seed: int = 0,
    list_name: str = "list.txt",
) -> Path:
    """``num_videos`` mp4 clips of :func:`moving_square_frames` in ``folder`` (label ``i % 4``, a
    :data:`DIRECTIONS` index; random start position, colour and grey level per clip, from ``seed``) and the
    list file ``folder/list_name`` (``video_XXXX.mp4 label`` lines, relative paths). Returns the list file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    travel = num_frames - 1
    if size - square < travel:
        raise ValueError(f"a {square} px square cannot move {travel} px in a {size} px frame: use a larger size")
    lines = []
    for i in range(num_videos):
        label = i % len(DIRECTIONS)
        dy, dx = _MOVES[DIRECTIONS[label]]
        along = int(rng.integers(0, size - square - travel + 1))
        across = int(rng.integers(0, size - square + 1))
        start_along = along if (dy + dx) > 0 else along + travel
        start = (start_along, across) if dy else (across, start_along)
        color = tuple(int(c) for c in rng.integers(160, 256, 3))
        frames = moving_square_frames(label, num_frames, size, square, start, 1, int(rng.integers(0, 64)), color)
        name = f"video_{i:04d}.mp4"
        encode_video(folder / name, frames)
        lines.append(f"{name} {label}\n")
    list_file = folder / list_name
    list_file.write_text("".join(lines))
    return list_file


def write_synthetic_clip_folder(
    folder: PathLike,
    num_train: int = 64,
    num_val: int = 32,
    num_frames: int = 16,
    size: int = 32,
    square: int = 8,
    seed: int = 0,
) -> Path:
    """A clip data folder of :func:`write_synthetic_clips` videos, as :func:`build_clip_dataset` reads it:
    ``folder/train.csv`` and ``folder/val.csv`` (``train/video_XXXX.mp4 label`` lines, space-separated, paths
    relative to ``folder``), the videos in ``folder/train`` and ``folder/val`` (different draws: seeds ``seed``
    and ``seed + 1``). Returns ``folder``."""
    folder = Path(folder)
    for split, count, split_seed in (("train", num_train, seed), ("val", num_val, seed + 1)):
        listed = write_synthetic_clips(folder / split, count, num_frames, size, square, split_seed)
        lines = [f"{split}/{line}\n" for line in listed.read_text().splitlines() if line.strip()]
        (folder / f"{split}.csv").write_text("".join(lines))
    return folder

"""Batched input pipeline on the device: JPEG decoding (nvJPEG on CUDA) and the paper's augmentation per batch.

The CPU pipeline (:mod:`rmeeto.data`) decodes and augments each image with PIL in DataLoader workers; at
ImageNet-size JPEGs and 1,000+ images/s per GPU that needs many cores per GPU. Here the workers only read files
(cheap) and the device does the rest, a whole batch at a time::

    pipe = build_gpu_pipeline("/data/imagenet/train", train=True, img_size=224, device="cuda",
                              auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25)
    loader = DataLoader(pipe.dataset, batch_size=128, sampler=sampler, num_workers=8,
                        collate_fn=pipe.collate_fn, drop_last=True)
    for batch in DeviceLoader(loader, pipe.transform):   # Batch(images [n, 3, 224, 224] on cuda, labels [n])
        ...

Stages:

1. :class:`EncodedImageFolder` (in the workers): item ``(index, seed)`` -> :class:`EncodedSample` holding the
   file's bytes when the device can decode it (a complete baseline/progressive JPEG, RGB or grey), else the
   image decoded on the CPU by PIL and converted to RGB (PNG, 16-bit, RGBA, CMYK JPEG, truncated JPEG that PIL
   still reads ...), or a :class:`~rmeeto.data.SkippedSample` for a file PIL cannot read either, exactly as
   :class:`~rmeeto.data.ImageFolderDataset` skips it. :func:`collate_encoded` -> :class:`EncodedBatch` (lists).
2. :class:`GpuTrainTransform` / :class:`GpuEvalTransform` (in the training process, on ``device``):
   ``torchvision.io.decode_jpeg(list, device=...)`` (batched nvJPEG on CUDA); an image the device fails on is
   retried alone, then with PIL on the CPU, and otherwise skipped (``batch.skipped``, counted by
   :class:`~rmeeto.data.SkipLog` like the CPU path). Then the augmentation, returning a :class:`~rmeeto.data.Batch`.

Training augmentation, the same steps and distributions as :func:`rmeeto.data.train_transform` (timm's
``create_transform``): RandomResizedCrop (scale (0.08, 1), ratio (3/4, 4/3), bicubic, per-sample boxes; for
``img_size <= 32`` resize + RandomCrop(padding 4) instead), horizontal flip (p 0.5), RandAugment
(``rand-mM-nN-mstdS-incI-pP``: the same 15 ops, op choice, per-op probability, magnitude noise and level
mappings as timm) or, without ``auto_augment``, ColorJitter (brightness/contrast/saturation, random order, as
timm/torchvision), normalisation, RandomErasing (``mode='pixel'``, area (0.02, 1/3), aspect (0.3, 3.3)).
Mixup/CutMix stay in the training loop: timm's ``Mixup`` already runs on the device batch.

Evaluation: resize the short side to ``int(img_size / crop_pct)`` (bicubic, antialiased; torchvision's size
rule), center crop, normalise, as :func:`rmeeto.data.eval_transform`.

Differences from the PIL path (all small; none changes what is augmented or how strongly):

- Pixels are kept as float tensors holding integers 0..255 between steps (rounded after every op, as PIL's
  uint8 images are), but the resampling kernels are torch's: the antialiased bicubic resize follows PIL's
  algorithm in float instead of PIL's fixed point (within a few levels of 255, see the tests), and the
  geometric RandAugment ops (rotate, shear, translate) use ``grid_sample`` (bicubic a = -0.75 where PIL uses
  a = -0.5; fill blended at the border instead of PIL's all-or-nothing fill). AutoContrast may differ by one
  level where PIL's float LUT rounds down.
- Random numbers: every sample draws its parameters from ``random.Random(sample_seed)`` and the erasing noise
  comes from a device ``torch.Generator`` seeded from the batch's first sample seed, so the streams differ from
  the CPU path's (same distributions). The result is a pure function of (files, sample seeds): the same under a
  seed, after a mid-epoch resume, and with any number of loader workers; the pipeline keeps no state across
  batches.
- NVIDIA DALI is not implemented as a backend (its wheel is very large and torchvision's nvJPEG decoding plus
  batched tensor ops cover the pipeline); nothing here needs it.

Overlap: :class:`DeviceLoader` runs stages 1-2 up to ``prefetch`` batches ahead in a thread, on its own CUDA stream
of the rank's device, while the model trains on the current batch (see its docstring for the stream protocol).

Choosing a pipeline: :func:`resolve_pipeline` maps ``"auto" | "cpu" | "gpu"``: auto = gpu on CUDA only where fewer
than 4 CPU loader workers per GPU are available (measured: decoding on the GPU takes GPU time from training, so
the CPU workers are faster wherever there are enough of them; see :func:`resolve_pipeline`). "gpu" on a CPU device runs this same batched code on the CPU (how the tests check it).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import os
import queue
import random
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from rmeeto._typing import PathLike, Tensor
from rmeeto.data import (Batch, DataError, ImageFolderDataset, IMG_EXTENSIONS, SkippedSample, check_image_size,
                         read_rgb)
from rmeeto.models import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "PIPELINES",
    "resolve_pipeline",
    "cpu_workers_per_rank",
    "GPU_PIPELINE_BELOW_WORKERS",
    "gpu_decode_available",
    "EncodedSample",
    "EncodedBatch",
    "EncodedImageFolder",
    "collate_encoded",
    "decode_images",
    "RandAugmentPolicy",
    "GpuTrainTransform",
    "GpuEvalTransform",
    "DeviceLoader",
    "GpuPipeline",
    "build_gpu_pipeline",
]

_logger = logging.getLogger(__name__)

PIPELINES = ("auto", "cpu", "gpu")
INTERPOLATIONS = ("bicubic", "bilinear")
_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"


# --------------------------------------------------------------------------------------------- selection


@functools.lru_cache(maxsize=None)
def gpu_decode_available(device: str = "cuda") -> bool:
    """Whether ``torchvision.io.decode_jpeg`` decodes on ``device`` here (tried once on a tiny JPEG, cached)."""
    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return False
    try:
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (10, 200, 30)).save(buf, "JPEG")
        out = _decode_jpegs([torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)], torch.device(device))
        return tuple(out[0].shape) == (3, 16, 16)
    except (ImportError, RuntimeError, TypeError):  # torchvision built without CUDA image ops, old torchvision
        return False


# Fewer CPU loader workers per GPU than this and "auto" decodes on the GPU. Measured on one H200 (Vim-S r=11
# re-training, paper preset, bf16, ImageNet-like JPEGs of ~114 KB; benchmarks/RESULTS.md, sixth session): the
# GPU pipeline's decode and augmentation take GPU time from training (a 1-GPU epoch at 745 img/s vs 976 with 15
# CPU workers, 1,027 on synthetic tensors), and CPU workers deliver ~170 / 315 / 780 / 2,030 img/s at 1 / 2 / 4
# / 8 workers (fourth session): below 4 workers the CPU pipeline is the slower one.
GPU_PIPELINE_BELOW_WORKERS = 4


def cpu_workers_per_rank(workers: Optional[int] = None) -> int:
    """CPU cores this process may use for loader workers: the cores it is allowed to run on, divided among the
    processes of this node (``LOCAL_WORLD_SIZE``, set by torchrun), capped by ``workers`` when given."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    per_rank = max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)))
    return per_rank if workers is None else max(0, min(int(workers), per_rank))


def resolve_pipeline(choice: str, device: Union[str, torch.device], data: PathLike = "",
                     workers: Optional[int] = None) -> str:
    """``"auto" | "cpu" | "gpu"`` -> ``"cpu"`` or ``"gpu"``.

    auto: "gpu" for an image folder on a CUDA device where nvJPEG works and fewer than
    :data:`GPU_PIPELINE_BELOW_WORKERS` CPU loader workers are available per GPU process
    (:func:`cpu_workers_per_rank`, capped by ``workers``, the ``-j`` setting), else "cpu". Measured, the GPU
    pipeline costs GPU time that training needs (see the constant), so it only wins where the CPU cannot keep up.
    An explicit "gpu" with a built-in set (``data`` = "digits" / "synthetic") is an error; "gpu" on a CPU device
    runs the batched pipeline on the CPU."""
    if choice not in PIPELINES:
        raise ValueError(f"pipeline must be one of {', '.join(PIPELINES)}, got {choice!r}")
    builtin = str(data) in ("digits", "synthetic")
    if choice == "gpu" and builtin:
        raise ValueError(f"the gpu input pipeline decodes image folders; {data!r} is a built-in tensor dataset")
    if choice != "auto":
        return choice
    device = torch.device(device)
    if builtin or not data or device.type != "cuda":
        return "cpu"
    if cpu_workers_per_rank(workers) >= GPU_PIPELINE_BELOW_WORKERS:
        return "cpu"
    return "gpu" if gpu_decode_available(str(device)) else "cpu"


# --------------------------------------------------------------------------------------------- reading (workers)


class EncodedSample(NamedTuple):
    """One training/eval sample as read by a worker. ``data``: the file's bytes (uint8 [num_bytes]) for the
    device to decode, or an image already decoded on the CPU (uint8 [3, H, W], RGB). ``seed`` drives this
    sample's augmentation."""

    data: Tensor
    label: int
    seed: int
    path: str


class EncodedBatch(NamedTuple):
    """Collated :class:`EncodedSample` s (lists: the images have different sizes) plus the samples the workers
    already skipped. ``labels``: int64 [n]; ``data``, ``seeds`` and ``paths`` have n entries."""

    data: list
    labels: Tensor
    seeds: list
    paths: list
    skipped: tuple


def _skip_reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def _device_decodable(raw: bytes) -> bool:
    """A complete JPEG (ends with the EOI marker) in a colour mode nvJPEG handles (YCbCr/RGB or grey).

    CMYK/YCCK JPEGs and truncated files go to PIL instead, so they get exactly the CPU path's treatment (PIL's
    CMYK conversion; a truncated file is skipped with PIL's error). Only the header is parsed here."""
    if not raw.startswith(_JPEG_SOI) or not raw.rstrip(b"\x00\r\n ").endswith(_JPEG_EOI):
        return False
    try:
        with Image.open(io.BytesIO(raw)) as img:
            check_image_size(img)  # an oversized one goes to PIL below, which skips it with the CPU path's reason
            return img.format == "JPEG" and img.mode in ("RGB", "L")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return False  # PIL decides below, with the error the CPU path would report


def _pil_decode(raw: bytes) -> Tensor:
    """Decode any image PIL reads to RGB uint8 [3, H, W] (raises what ImageFolderDataset would catch)."""
    img = read_rgb(io.BytesIO(raw))  # grey, 16-bit, RGBA, palette, CMYK -> RGB; size limit; as the CPU path
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous()


class EncodedImageFolder(Dataset):
    """``root/<class>/<image>`` (classes and files as :class:`~rmeeto.data.ImageFolderDataset`) read for the
    device pipeline. Keys: ``(index, sample_seed)`` as the training loop's ``ResumableSampler`` yields them, or
    a plain ``index`` (seed ``seed * 1_000_003 + index``). Items: :class:`EncodedSample`, or
    :class:`~rmeeto.data.SkippedSample` for a file that cannot be read or decoded by PIL (logged once per
    process, as the CPU path)."""

    def __init__(self, root: PathLike, extensions: Sequence[str] = IMG_EXTENSIONS, seed: int = 0):
        self.folder = ImageFolderDataset(root, transform=None, extensions=extensions)
        self.root, self.classes, self.class_to_idx = self.folder.root, self.folder.classes, self.folder.class_to_idx
        self.samples, self.targets = self.folder.samples, self.folder.targets
        self.seed = int(seed)
        self._reported: set[str] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def _skip(self, path: str, exc: BaseException) -> SkippedSample:
        reason = _skip_reason(exc)
        if path not in self._reported:
            self._reported.add(path)
            _logger.warning("skipping unreadable image %s (%s)", path, reason)
        return SkippedSample(path, reason)

    def __getitem__(self, key) -> Union[EncodedSample, SkippedSample]:
        index, seed = key if isinstance(key, tuple) else (key, self.seed * 1_000_003 + int(key))
        path, label = self.samples[index]
        try:
            with open(path, "rb") as f:
                raw = f.read()
            if _device_decodable(raw):
                data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
            else:
                data = _pil_decode(raw)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            return self._skip(path, exc)
        return EncodedSample(data, label, int(seed), path)


def collate_encoded(samples: Sequence[Any]) -> Optional[EncodedBatch]:
    """Collate :class:`EncodedSample` s into an :class:`EncodedBatch`, dropping ``None`` and skipped samples
    (kept in ``skipped``); ``None`` when no sample was readable (loops skip ``None`` batches)."""
    good = [s for s in samples if isinstance(s, EncodedSample)]
    skipped = tuple(s for s in samples if isinstance(s, SkippedSample))
    if not good:
        return None
    labels = torch.tensor([s.label for s in good], dtype=torch.int64)
    return EncodedBatch(_one_buffer([s.data for s in good]), labels, [s.seed for s in good], [s.path for s in good],
                        skipped)


def _one_buffer(data: list) -> list:
    """The JPEG byte tensors of a batch as slices of one buffer (images decoded on the CPU left as they are).

    A loader worker hands each tensor to the training process through its own shared-memory segment and file
    descriptor: 128 per batch cost the receiving thread a file, a descriptor and a mapping each (and hit
    ``ulimit -n`` with many workers prefetching); slices of one buffer travel as one."""
    encoded = [i for i, d in enumerate(data) if d.dim() == 1]
    if len(encoded) < 2:
        return list(data)
    flat = torch.cat([data[i] for i in encoded])
    out, offset = list(data), 0
    for i in encoded:
        n = data[i].numel()
        out[i] = flat[offset:offset + n]
        offset += n
    return out


# --------------------------------------------------------------------------------------------- decoding (device)


def _rank_device(device: Union[str, torch.device]) -> torch.device:
    """``device`` with its index made explicit: an index-less ``cuda`` becomes this process's current GPU.

    The pipeline runs CUDA work from a prefetch thread, and CUDA's current device is per thread (a new thread
    starts on GPU 0 on every rank): an index-less ``cuda`` resolved there would put rank 1's batches on GPU 0.
    So the index is fixed once, in the thread that builds the pipeline (after ``torch.cuda.set_device``)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _decode_jpegs(data: list, device: torch.device) -> list:
    """``torchvision.io.decode_jpeg`` of a list of JPEG byte tensors -> uint8 [3, H_i, W_i] tensors on ``device``.

    On CUDA, torchvision allocates the outputs on the calling thread's current stream but nvJPEG writes them
    from the decoder's own stream, without waiting for the current one (pytorch/vision#9606). A block the
    caching allocator hands out may have been freed on the current stream while queued kernels still read it
    (the previous training step's activations, a previous batch's temporaries): the decode would overwrite
    them under those kernels, silently corrupting gradients (the likely cause of the first 2-GPU runs' NaN:
    eager DDP frees activations that queued backward kernels still read; one graphed GPU does not). Draining the
    current stream first leaves only idle blocks to hand out. Run from the prefetch thread's own stream this
    costs the training stream nothing."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if device.type != "cuda":
        return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
    device = _rank_device(device)
    with torch.cuda.device(device):  # also the device torchvision's decoder records its completion event on
        torch.cuda.current_stream(device).synchronize()
        return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))


def decode_images(batch: EncodedBatch, device: Union[str, torch.device]) -> tuple[list, list]:
    """Decode a batch on ``device``. Returns ``(images, skipped)``: ``images[i]`` is uint8 [3, H_i, W_i] on
    ``device`` or ``None`` where sample i could not be decoded at all, in which case ``skipped`` holds its
    :class:`~rmeeto.data.SkippedSample` (after the workers' ``batch.skipped``).

    JPEG bytes are decoded in one batched call; if it fails, each is retried alone on the device, then with
    PIL on the CPU (the CPU path's decoder decides whether a file is unreadable)."""
    device = _rank_device(device)
    images: list = [None] * len(batch.data)
    encoded = [i for i, d in enumerate(batch.data) if d.dim() == 1]
    for i, d in enumerate(batch.data):
        if d.dim() == 3:
            images[i] = d.to(device, non_blocking=True)
    if encoded:
        try:
            for i, img in zip(encoded, _decode_jpegs([batch.data[i] for i in encoded], device)):
                images[i] = img
        except (RuntimeError, TypeError):  # one bad file fails the whole batched call: find it
            for i in encoded:
                try:
                    images[i] = _decode_jpegs([batch.data[i]], device)[0]
                except (RuntimeError, TypeError):
                    pass
    skipped = list(batch.skipped)
    for i in encoded:
        if images[i] is None:
            try:
                images[i] = _pil_decode(batch.data[i].numpy().tobytes()).to(device)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
                _logger.warning("skipping unreadable image %s (%s)", batch.paths[i], _skip_reason(exc))
                skipped.append(SkippedSample(batch.paths[i], _skip_reason(exc)))
    return images, skipped


# --------------------------------------------------------------------------------------------- pixel ops
# Images are float [n, 3, H, W] holding integers 0..255 (PIL's uint8 values); per-sample arguments are float
# [n] tensors on the images' device. Every op returns integer values again (floor as PIL's casts, or round).


def _u8(x: Tensor) -> Tensor:
    return x.round_().clamp_(0, 255)


def _blend(degenerate: Tensor, x: Tensor, factor: Tensor) -> Tensor:
    """PIL ``Image.blend(degenerate, x, factor)``: degenerate + factor * (x - degenerate), truncated to uint8."""
    return (degenerate + factor.view(-1, 1, 1, 1) * (x - degenerate)).clamp_(0, 255).floor_()


def _grey(x: Tensor) -> Tensor:
    """PIL's RGB -> L (ITU-R 601-2 luma, 16-bit fixed point): [n, 3, H, W] -> [n, 1, H, W]."""
    r, g, b = x.unbind(1)
    return torch.floor((r * 19595 + g * 38470 + b * 7471 + 32768) / 65536).unsqueeze(1)


def _color(x: Tensor, factor: Tensor) -> Tensor:  # ImageEnhance.Color (saturation)
    return _blend(_grey(x).expand_as(x), x, factor)


def _contrast(x: Tensor, factor: Tensor) -> Tensor:  # ImageEnhance.Contrast: blend with the mean grey level
    mean = torch.floor(_grey(x).mean(dim=(1, 2, 3), keepdim=True) + 0.5)
    return _blend(mean.expand_as(x), x, factor)


def _brightness(x: Tensor, factor: Tensor) -> Tensor:  # ImageEnhance.Brightness: blend with black
    return _blend(torch.zeros_like(x), x, factor)


def _sharpness(x: Tensor, factor: Tensor) -> Tensor:
    """ImageEnhance.Sharpness: blend with PIL's SMOOTH filter (3x3, centre 5, others 1, /13; border kept)."""
    kernel = torch.ones(3, 1, 3, 3, dtype=x.dtype, device=x.device)
    kernel[:, :, 1, 1] = 5.0
    smooth = _u8(F.conv2d(x, kernel / 13.0, groups=3))
    degenerate = x.clone()
    degenerate[:, :, 1:-1, 1:-1] = smooth
    return _blend(degenerate, x, factor)


def _posterize(x: Tensor, bits: Tensor) -> Tensor:  # keep the `bits` most significant bits (8 = unchanged)
    step = torch.pow(2.0, 8 - bits.clamp(0, 8)).view(-1, 1, 1, 1)
    return torch.floor(x / step) * step


def _solarize(x: Tensor, threshold: Tensor) -> Tensor:  # invert pixels >= threshold
    return torch.where(x >= threshold.view(-1, 1, 1, 1), 255 - x, x)


def _solarize_add(x: Tensor, add: Tensor) -> Tensor:  # add to pixels below 128, saturating
    return torch.where(x < 128, (x + add.view(-1, 1, 1, 1)).clamp(max=255), x)


def _invert(x: Tensor, _: Tensor) -> Tensor:
    return 255 - x


def _autocontrast(x: Tensor, _: Tensor) -> Tensor:
    """ImageOps.autocontrast (cutoff 0): stretch each channel's [min, max] to [0, 255]; flat channels kept."""
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    flat = hi <= lo
    stretched = torch.floor((x - lo) * 255 / torch.where(flat, torch.ones_like(hi), hi - lo))
    return torch.where(flat, x, stretched.clamp_(0, 255))


def _equalize(x: Tensor, _: Tensor) -> Tensor:
    """ImageOps.equalize per channel (torchvision's tensor equalize implements PIL's LUT)."""
    from torchvision.transforms.v2 import functional as TF

    return TF.equalize(x.to(torch.uint8)).to(x.dtype)


def _affine(x: Tensor, matrix: Tensor, fill: Tensor, mode: str) -> Tensor:
    """PIL ``img.transform(size, AFFINE, (a, b, c, d, e, f), fillcolor=fill)`` per sample.

    ``matrix`` [n, 2, 3] maps output pixel coordinates to input ones (pixel centres at i + 0.5, as PIL).
    Pixels mapped outside the image take ``fill`` [3]."""
    n, _, h, w = x.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=x.dtype, device=x.device) + 0.5,
                            torch.arange(w, dtype=x.dtype, device=x.device) + 0.5, indexing="ij")
    out_xy1 = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).view(1, h * w, 3)
    in_xy = out_xy1 @ matrix.transpose(1, 2)  # [n, h*w, 2] input pixel coordinates
    grid = torch.stack([in_xy[..., 0] * (2.0 / w) - 1, in_xy[..., 1] * (2.0 / h) - 1], dim=-1).view(n, h, w, 2)
    # sample the image and an all-ones plane together: the plane's value is how much of each output pixel
    # came from inside the image, the rest is fill (zeros padding + this blend = fill padding)
    planes = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
    sampled = F.grid_sample(planes, grid, mode=mode, padding_mode="zeros", align_corners=False)
    inside = sampled[:, 3:].clamp(0, 1)
    return _u8(sampled[:, :3] + (1 - inside) * fill.view(1, 3, 1, 1))


def _affine_matrix(n: int, device, a=0.0, b=0.0, c=0.0, d=0.0, e=0.0, f=0.0) -> Tensor:
    """[n, 2, 3] from per-sample [n] tensors or scalars (a b c / d e f, PIL's order)."""
    def full(v):
        return v if isinstance(v, Tensor) else torch.full((n,), float(v), device=device)

    return torch.stack([torch.stack([full(a), full(b), full(c)], -1), torch.stack([full(d), full(e), full(f)], -1)], 1)


def _rotate(x: Tensor, degrees: Tensor, fill: Tensor, mode: str) -> Tensor:
    """PIL ``img.rotate(degrees)`` (counter-clockwise, about the image centre, same size)."""
    n, _, h, w = x.shape
    angle = -torch.deg2rad(degrees)
    cos, sin = torch.cos(angle), torch.sin(angle)
    cx, cy = w / 2.0, h / 2.0
    # input = R (output - centre) + centre, R = [[cos, sin], [-sin, cos]]
    m = _affine_matrix(n, x.device, cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy)
    return _affine(x, m, fill, mode)


def _shear_x(x, factor, fill, mode):
    return _affine(x, _affine_matrix(len(x), x.device, a=1, b=factor, e=1), fill, mode)


def _shear_y(x, factor, fill, mode):
    return _affine(x, _affine_matrix(len(x), x.device, a=1, d=factor, e=1), fill, mode)


def _translate_x(x, pct, fill, mode):  # pixels = pct * width; input x = output x + pixels
    return _affine(x, _affine_matrix(len(x), x.device, a=1, c=pct * x.shape[-1], e=1), fill, mode)


def _translate_y(x, pct, fill, mode):
    return _affine(x, _affine_matrix(len(x), x.device, a=1, e=1, f=pct * x.shape[-2]), fill, mode)


# op name -> (function, is geometric). The names are timm's RandAugment names; the level mapping is below.
_OPS: dict[str, tuple[Callable, bool]] = {
    "AutoContrast": (_autocontrast, False), "Equalize": (_equalize, False), "Invert": (_invert, False),
    "Rotate": (_rotate, True), "Posterize": (_posterize, False), "PosterizeIncreasing": (_posterize, False),
    "Solarize": (_solarize, False), "SolarizeIncreasing": (_solarize, False), "SolarizeAdd": (_solarize_add, False),
    "Color": (_color, False), "ColorIncreasing": (_color, False), "Contrast": (_contrast, False),
    "ContrastIncreasing": (_contrast, False), "Brightness": (_brightness, False),
    "BrightnessIncreasing": (_brightness, False), "Sharpness": (_sharpness, False),
    "SharpnessIncreasing": (_sharpness, False), "ShearX": (_shear_x, True), "ShearY": (_shear_y, True),
    "TranslateXRel": (_translate_x, True), "TranslateYRel": (_translate_y, True),
}

# timm's op lists (auto_augment._RAND_TRANSFORMS / _RAND_INCREASING_TRANSFORMS), in timm's order
_RAND_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
             "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
_RAND_INC_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
                 "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
                 "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


def _negate(rng: random.Random, v: float) -> float:
    return -v if rng.random() > 0.5 else v


def _level_to_arg(name: str, level: float, rng: random.Random) -> float:
    """timm's ``LEVEL_TO_ARG`` for magnitude ``level`` in [0, 10] (the 'Increasing' variants grow with level)."""
    frac = level / 10.0
    if name == "Rotate":
        return _negate(rng, frac * 30.0)
    if name in ("ShearX", "ShearY"):
        return _negate(rng, frac * 0.3)
    if name in ("TranslateXRel", "TranslateYRel"):
        return _negate(rng, frac * 0.45)
    if name == "Posterize":
        return float(int(frac * 4))
    if name == "PosterizeIncreasing":
        return float(4 - int(frac * 4))
    if name == "Solarize":
        return float(min(256, int(frac * 256)))
    if name == "SolarizeIncreasing":
        return float(256 - min(256, int(frac * 256)))
    if name == "SolarizeAdd":
        return float(min(128, int(frac * 110)))
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return frac * 1.8 + 0.1
    if name.endswith("Increasing"):  # Color/Contrast/Brightness/SharpnessIncreasing: 1 +- 0.9 frac, >= 0.1
        return max(0.1, 1.0 + _negate(rng, frac * 0.9))
    return 0.0  # AutoContrast, Equalize, Invert take no argument


@dataclass(frozen=True)
class RandAugmentPolicy:
    """timm's RandAugment config string parsed: ``rand-m9-mstd0.5-inc1`` -> magnitude 9, 2 layers, magnitude
    noise std 0.5 (clipped to [0, ``magnitude_max``]), increasing ops, each op applied with probability 0.5."""

    magnitude: float = 10.0
    num_layers: int = 2
    magnitude_std: float = 0.0
    magnitude_max: float = 10.0
    increasing: bool = False
    prob: float = 0.5

    @classmethod
    def parse(cls, config_str: str) -> "RandAugmentPolicy":
        parts = config_str.split("-")
        if parts[0] != "rand":
            raise ValueError(f"the gpu pipeline implements RandAugment ('rand-...') only, got {config_str!r}")
        kw: dict[str, Any] = {}
        keys = {"m": "magnitude", "n": "num_layers", "mstd": "magnitude_std", "mmax": "magnitude_max",
                "inc": "increasing", "p": "prob"}
        for part in parts[1:]:
            m = re.fullmatch(r"([a-z]+)(\d.*)", part)
            if m is None or m.group(1) not in keys:
                raise ValueError(f"unknown RandAugment section {part!r} in {config_str!r} "
                                 f"(known: {', '.join(keys)})")
            key, value = keys[m.group(1)], float(m.group(2))
            kw[key] = bool(int(value)) if key == "increasing" else int(value) if key == "num_layers" else value
        if kw.get("magnitude_std", 0) > 100:  # timm: mstd > 100 means uniform in [0, magnitude]
            kw["magnitude_std"] = math.inf
        return cls(**kw)

    @property
    def ops(self) -> tuple[str, ...]:
        return _RAND_INC_OPS if self.increasing else _RAND_OPS

    def sample(self, rng: random.Random) -> list[tuple[str, float]]:
        """The ops one image gets, ``[(name, argument), ...]`` (ops skipped by their probability left out)."""
        chosen = [self.ops[rng.randrange(len(self.ops))] for _ in range(self.num_layers)]  # with replacement
        out = []
        for name in chosen:
            if self.prob < 1.0 and rng.random() > self.prob:
                continue
            level = self.magnitude
            if self.magnitude_std == math.inf:
                level = rng.uniform(0, level)
            elif self.magnitude_std > 0:
                level = rng.gauss(level, self.magnitude_std)
            level = max(0.0, min(level, self.magnitude_max))
            out.append((name, _level_to_arg(name, level, rng)))
        return out


def _apply_grouped(x: Tensor, plans: list[list[tuple[str, float]]], fill: Tensor, mode: str) -> Tensor:
    """Apply per-sample op lists to the batch [n, 3, H, W]: at each position, samples sharing an op run it
    together with their own arguments (one kernel sequence per op present, not per sample)."""
    depth = max((len(p) for p in plans), default=0)
    for pos in range(depth):
        groups: dict[str, tuple[list[int], list[float]]] = {}
        for i, plan in enumerate(plans):
            if pos < len(plan):
                idx, args = groups.setdefault(plan[pos][0], ([], []))
                idx.append(i)
                args.append(plan[pos][1])
        for name, (idx, args) in groups.items():
            fn, geometric = _OPS[name]
            index = torch.tensor(idx, device=x.device)
            arg = torch.tensor(args, dtype=x.dtype, device=x.device)
            sub = x.index_select(0, index)
            x = x.index_copy(0, index, fn(sub, arg, fill, mode) if geometric else fn(sub, arg))
    return x


def _color_jitter_plan(rng: random.Random, strength: float) -> list[tuple[str, float]]:
    """torchvision ColorJitter(b, c, s) with b = c = s = ``strength``: the three in random order, factors
    uniform in [1 - strength, 1 + strength] (hue off, as timm's float color_jitter)."""
    ops = [("Brightness", 0), ("Contrast", 0), ("Color", 0)]
    rng.shuffle(ops)
    return [(name, rng.uniform(max(0.0, 1 - strength), 1 + strength)) for name, _ in ops]


# --------------------------------------------------------------------------------------------- geometry


def _rrc_box(rng: random.Random, h: int, w: int, scale, ratio) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box (top, left, height, width): timm's ``get_params`` (10 tries, then centre crop)."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = rng.uniform(*scale) * area
        aspect = math.exp(rng.uniform(*log_ratio))
        cw = int(round(math.sqrt(target_area * aspect)))
        ch = int(round(math.sqrt(target_area / aspect)))
        if 0 < cw <= w and 0 < ch <= h:  # as timm: a 1-2 px image can round a box to zero pixels
            return rng.randint(0, h - ch), rng.randint(0, w - cw), ch, cw
    in_ratio = w / h
    if in_ratio < min(ratio):
        cw, ch = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        ch, cw = h, int(round(h * max(ratio)))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def _resize(img: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    """[3, h, w] (any dtype, integer values) -> float [3, *size], antialiased like PIL, rounded to 0..255."""
    x = img.unsqueeze(0).float()
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False)
    return _u8(x[0])


def _short_side_size(h: int, w: int, short: int) -> tuple[int, int]:
    """torchvision ``Resize(int)``'s output size: the short side to ``short``, the long side truncated."""
    if h <= w:
        return short, int(short * w / h)
    return int(short * h / w), short


def _erase_box(rng: random.Random, h: int, w: int, prob: float) -> Optional[tuple[int, int, int, int]]:
    """timm RandomErasing's box for one image (count 1, area (0.02, 1/3), log-aspect (0.3, 1/0.3)) or None."""
    if rng.random() > prob:
        return None
    log_aspect = (math.log(0.3), math.log(1 / 0.3))
    for _ in range(10):
        target_area = rng.uniform(0.02, 1 / 3) * h * w
        aspect = math.exp(rng.uniform(*log_aspect))
        eh = int(round(math.sqrt(target_area * aspect)))
        ew = int(round(math.sqrt(target_area / aspect)))
        if ew < w and eh < h:
            return rng.randint(0, h - eh), rng.randint(0, w - ew), eh, ew
    return None


# --------------------------------------------------------------------------------------------- transforms


def _norm_tensors(mean, std, device) -> tuple[Tensor, Tensor]:
    return (torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255,
            torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255)


def _check_common(img_size: int, mean, std, interpolation: str) -> None:
    if img_size < 1:
        raise ValueError(f"img_size must be >= 1, got {img_size}")
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"mean and std need 3 values each (std > 0), got {tuple(mean)} / {tuple(std)}")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")


def _decode_kept(batch: Optional[EncodedBatch],
                 device: Union[str, torch.device]) -> Optional[tuple[list, list, list]]:
    """:func:`decode_images` of ``batch``, plus ``keep``: the indices of the images that decoded. ``None`` when
    there is no batch or no image of it decoded (the transforms then return ``None``: loops skip such batches)."""
    if batch is None:
        return None
    images, skipped = decode_images(batch, device)
    keep = [i for i, img in enumerate(images) if img is not None]
    return (images, keep, skipped) if keep else None


@dataclass
class GpuEvalTransform:
    """Evaluation on the device: :class:`EncodedBatch` -> :class:`~rmeeto.data.Batch` (images float32
    [n, 3, img_size, img_size] normalised, labels int64 [n], both on ``device``), or ``None`` if nothing in the
    batch decoded. Resize short side to ``int(img_size / crop_pct)``, center crop, normalise."""

    img_size: int = 224
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    device: Union[str, torch.device] = "cpu"

    def __post_init__(self):
        _check_common(self.img_size, self.mean, self.std, self.interpolation)
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        self.device = _rank_device(self.device)  # an explicit index: batches are made in a prefetch thread
        self._mean, self._std = _norm_tensors(self.mean, self.std, self.device)

    def crop(self, img: Tensor) -> Tensor:
        """uint8 [3, H, W] -> float [3, img_size, img_size] (integer values 0..255)."""
        from torchvision.transforms.v2 import functional as TF

        size = _short_side_size(img.shape[-2], img.shape[-1], int(self.img_size / self.crop_pct))
        return TF.center_crop(_resize(img, size, self.interpolation), [self.img_size, self.img_size])

    def __call__(self, batch: Optional[EncodedBatch]) -> Optional[Batch]:
        decoded = _decode_kept(batch, self.device)
        if decoded is None:
            return None
        images, keep, skipped = decoded
        x = torch.stack([self.crop(images[i]) for i in keep])
        labels = batch.labels[keep].to(self.device, non_blocking=True)
        return Batch((x - self._mean) / self._std, labels, skipped)


@dataclass
class GpuTrainTransform:
    """Training augmentation on the device: :class:`EncodedBatch` -> :class:`~rmeeto.data.Batch` (images float32
    [n, 3, img_size, img_size] normalised, labels int64 [n], on ``device``), or ``None`` if nothing decoded.

    The same options as :func:`rmeeto.data.train_transform`: ``auto_augment`` a timm RandAugment string (or
    None/"" for ColorJitter(``color_jitter``) instead, as timm), ``re_prob`` the RandomErasing probability.
    Every sample's random parameters come from its own seed (``batch.seeds``), the erasing noise from a
    generator seeded by the batch's first seed: a batch's output depends only on its files and seeds."""

    img_size: int = 224
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    auto_augment: Optional[str] = "rand-m9-mstd0.5-inc1"
    re_prob: float = 0.25
    color_jitter: float = 0.3
    interpolation: str = "bicubic"
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    device: Union[str, torch.device] = "cpu"
    policy: Optional[RandAugmentPolicy] = field(init=False, default=None)

    def __post_init__(self):
        _check_common(self.img_size, self.mean, self.std, self.interpolation)
        for name in ("re_prob", "hflip"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.color_jitter < 0:
            raise ValueError(f"color_jitter must be >= 0, got {self.color_jitter}")
        if not (0 < self.scale[0] <= self.scale[1] and 0 < self.ratio[0] <= self.ratio[1]):
            raise ValueError(f"scale and ratio must be increasing positive ranges, got {self.scale} / {self.ratio}")
        self.policy = RandAugmentPolicy.parse(self.auto_augment) if self.auto_augment else None
        self.device = _rank_device(self.device)  # an explicit index: batches are made in a prefetch thread
        self._mean, self._std = _norm_tensors(self.mean, self.std, self.device)
        # RandAugment's geometric fill: the mean colour as uint8, as timm's img_mean hparam
        self._fill = torch.tensor([min(255, round(255 * m)) for m in self.mean], dtype=torch.float32,
                                  device=self.device)

    def _crop(self, img: Tensor, rng: random.Random) -> Tensor:
        """uint8 [3, H, W] -> float [3, S, S]: random resized crop and flip (S <= 32: resize, pad-4 crop)."""
        s = self.img_size
        h, w = img.shape[-2:]
        if s <= 32:  # as data.train_transform: Resize(s) then RandomCrop(s, padding=4) with black padding
            x = F.pad(_resize(img, _short_side_size(h, w, s), self.interpolation), (4, 4, 4, 4))
            top, left = rng.randint(0, x.shape[-2] - s), rng.randint(0, x.shape[-1] - s)
            x = x[:, top:top + s, left:left + s]
        else:
            top, left, ch, cw = _rrc_box(rng, h, w, self.scale, self.ratio)
            x = _resize(img[:, top:top + ch, left:left + cw], (s, s), self.interpolation)
        return x.flip(-1) if rng.random() < self.hflip else x

    def __call__(self, batch: Optional[EncodedBatch]) -> Optional[Batch]:
        decoded = _decode_kept(batch, self.device)
        if decoded is None:
            return None
        images, keep, skipped = decoded
        rngs = [random.Random(batch.seeds[i]) for i in keep]
        x = torch.stack([self._crop(images[i], rng) for i, rng in zip(keep, rngs)])
        if self.policy is not None:
            plans = [self.policy.sample(rng) for rng in rngs]
        elif self.color_jitter > 0:
            plans = [_color_jitter_plan(rng, self.color_jitter) for rng in rngs]
        else:
            plans = []
        x = _apply_grouped(x, plans, self._fill, self.interpolation)
        x = (x - self._mean) / self._std
        if self.re_prob > 0:
            x = self._erase(x, [_erase_box(rng, self.img_size, self.img_size, self.re_prob) for rng in rngs],
                            batch.seeds[keep[0]])
        labels = batch.labels[keep].to(self.device, non_blocking=True)
        return Batch(x, labels, skipped)

    def _erase(self, x: Tensor, boxes: list, seed: int) -> Tensor:
        """Fill each sample's box (or nothing for None) with per-pixel N(0, 1) noise, as timm's 'pixel' mode."""
        erased = [i for i, b in enumerate(boxes) if b is not None]
        if not erased:
            return x
        gen = torch.Generator(device=self.device).manual_seed(seed % (2**63))
        noise = torch.randn((len(erased),) + tuple(x.shape[1:]), generator=gen, device=self.device, dtype=x.dtype)
        rows = torch.arange(x.shape[-2], device=self.device).view(1, -1, 1)
        cols = torch.arange(x.shape[-1], device=self.device).view(1, 1, -1)
        top, left, eh, ew = (torch.tensor([boxes[i][k] for i in erased], device=self.device).view(-1, 1, 1)
                             for k in range(4))
        inside = (rows >= top) & (rows < top + eh) & (cols >= left) & (cols < left + ew)  # [k, H, W]
        index = torch.tensor(erased, device=self.device)
        sub = torch.where(inside.unsqueeze(1), noise, x.index_select(0, index))
        return x.index_copy(0, index, sub)


# --------------------------------------------------------------------------------------------- loader glue


class _Failure(NamedTuple):
    """An exception raised in the prefetch thread, carried to the consumer to be raised there."""

    exc: BaseException


_END = object()  # the prefetch thread's "the loader is exhausted"


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    """Put ``item`` into the bounded queue unless the consumer has stopped; False when it has."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


class DeviceLoader:
    """Iterate ``loader`` (yielding :class:`EncodedBatch` or None) through ``transform`` (on the device):
    yields :class:`~rmeeto.data.Batch` or None, has the loader's length, and forwards ``sampler``.

    With ``prefetch`` > 0 (default 2) a background thread runs the loader and the transform up to ``prefetch``
    batches ahead of the consumer, so batch k+1 is read (with ``workers=0``, in that thread), decoded and
    augmented while the model trains on batch k. On CUDA that work is queued on the thread's own stream of the
    transform's device (one per iteration, so one per rank): the consumer's current stream waits for a batch's
    completion event before using it, and ``record_stream`` keeps the batch's memory from being reused by the
    side stream until the consumer's stream is done with it. ``prefetch=0``: the transform runs in the
    consumer's thread and stream, batch by batch (no overlap).

    What is yielded does not depend on ``prefetch``: each batch is a pure function of its files and seeds, so
    runs stay deterministic under a seed and a mid-epoch resume (the sampler's start is fixed when iteration
    begins, in the caller's thread) reproduces the uninterrupted run. Batches prefetched past the point where
    the consumer stops are discarded; an exception in the thread is raised in the consumer."""

    def __init__(self, loader: Iterable, transform: Callable[[Optional[EncodedBatch]], Optional[Batch]],
                 prefetch: int = 2):
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0 batches, got {prefetch}")
        self.loader, self.transform, self.prefetch = loader, transform, int(prefetch)

    @property
    def sampler(self):
        return getattr(self.loader, "sampler", None)

    @property
    def device(self) -> torch.device:
        return _rank_device(getattr(self.transform, "device", "cpu"))

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Optional[Batch]]:
        # the loader's iterator is created now, in the caller's thread: its workers start reading files (and the
        # sampler's epoch and start are read) when the caller asks for an iterator, not at its first batch, and
        # signal handlers can only be installed from the main thread. The transform starts at the first batch.
        source = iter(self.loader)
        if self.prefetch == 0:
            return (self.transform(batch) for batch in source)
        return self._prefetched(source)

    def _prefetched(self, source: Iterator) -> Iterator[Optional[Batch]]:
        device = self.device
        side = torch.cuda.Stream(device) if device.type == "cuda" else None
        ready_queue: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def produce() -> None:
            try:
                if side is not None:
                    torch.cuda.set_device(device)  # this thread's current device (GPU 0 by default on any rank)
                for encoded in source:
                    with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
                        batch = self.transform(encoded)
                        done = None
                        if side is not None:
                            done = torch.cuda.Event()
                            done.record(side)
                    if not _put(ready_queue, (batch, done), stop):
                        return
                _put(ready_queue, _END, stop)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer's thread
                _put(ready_queue, _Failure(exc), stop)

        thread = threading.Thread(target=produce, name="rmeeto-device-loader", daemon=True)
        thread.start()
        try:
            while True:
                item = ready_queue.get()
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.exc
                batch, done = item
                if done is not None and batch is not None:
                    stream = torch.cuda.current_stream(device)
                    stream.wait_event(done)
                    for tensor in batch:  # images, labels: allocated on the side stream, used on this one
                        tensor.record_stream(stream)
                yield batch
        finally:
            stop.set()
            # wait for the thread: with persistent workers the next iter(loader) resets this same iterator, which
            # two threads must never read at once (it finishes the batch it is reading, then sees ``stop``)
            while thread.is_alive():
                try:
                    ready_queue.get_nowait()
                except queue.Empty:
                    pass
                thread.join(timeout=0.05)


class GpuPipeline(NamedTuple):
    """What :func:`build_gpu_pipeline` returns: use ``dataset`` and ``collate_fn`` in a DataLoader and wrap the
    loader with ``DeviceLoader(loader, transform)``."""

    dataset: EncodedImageFolder
    collate_fn: Callable
    transform: Union[GpuTrainTransform, GpuEvalTransform]


def build_gpu_pipeline(
    root: PathLike,
    train: bool,
    *,
    img_size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    crop_pct: float = 0.875,
    auto_augment: Optional[str] = "rand-m9-mstd0.5-inc1",
    re_prob: float = 0.25,
    color_jitter: float = 0.3,
    interpolation: str = "bicubic",
    device: Union[str, torch.device] = "cuda",
    seed: int = 0,
) -> GpuPipeline:
    """The device pipeline for the image folder ``root`` (``root/<class>/<image>``): training augmentation
    (``train=True``, options as :func:`rmeeto.data.train_transform`) or the evaluation protocol (``crop_pct``).
    ``seed`` only seeds samples requested by plain index (the training sampler passes its own seeds)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist or is not a folder")
    dataset = EncodedImageFolder(root, seed=seed)
    if train:
        transform: Union[GpuTrainTransform, GpuEvalTransform] = GpuTrainTransform(
            img_size, mean, std, auto_augment=auto_augment, re_prob=re_prob, color_jitter=color_jitter,
            interpolation=interpolation, device=device)
    else:
        transform = GpuEvalTransform(img_size, mean, std, crop_pct=crop_pct, interpolation=interpolation,
                                     device=device)
    return GpuPipeline(dataset, collate_encoded, transform)

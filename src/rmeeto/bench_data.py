"""Input-pipeline benchmark: images/s of data loading alone (CPU workers at 1..N vs the device pipeline), and
a generator of ImageNet-like JPEG folders to run it on.

    python -m rmeeto.bench_data make-jpegs /tmp/jpegs --images 12800 --classes 100
    python -m rmeeto.bench_data run /tmp/jpegs --workers 1,2,4,8,14 --batch-size 128

The CPU rows time :func:`rmeeto.data.train_transform` (PIL decode + timm augmentation) in DataLoader workers,
the GPU row :mod:`rmeeto.gpu_data` (workers read bytes, the device decodes and augments), both with the paper's
training augmentation and the batches ending on the device (GPU row synchronised before the clock stops). A
user compares these rates with ``rmeeto bench --train``'s to see whether data or the model bounds training.

Timing a loader that runs ahead: ``workers`` processes each hold up to ``prefetch_factor`` (4) batches in flight
and the GPU path's thread ``prefetch`` (2) more, so the first batches arrive in a burst. Every row therefore
first takes at least that many batches untimed (its *depth*), then times ``batches`` more; batches finished out
of order can still be waiting when the clock starts (up to about one per worker), which overstates the rate by
at most ``workers / batches``: the default is ``10 x workers`` batches (at least 20), and fewer than
``4 x workers`` is refused.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from rmeeto.argtypes import auto_augment_policy, comma_nonneg_ints, nonneg_int, positive_int, seed_int

__all__ = [
    "make_jpegs", "timed_batches", "bench_cpu_pipeline", "bench_gpu_pipeline", "bench_data", "format_rows", "main",
]

# ImageNet-1K train: most images are 500 px on the long side, 4:3 (500x375 / 375x500) or 3:2; mean ~110 KB
_SIZES = ((500, 375), (500, 333), (375, 500), (500, 500), (400, 300), (333, 500), (500, 400), (450, 350))
_SIZE_P = (0.45, 0.15, 0.12, 0.06, 0.06, 0.06, 0.05, 0.05)
_PREFETCH_FACTOR = 4  # batches in flight per DataLoader worker


def _one_jpeg(path: str, seed: int, quality: int, noise: float) -> int:
    """Write one synthetic photo-like JPEG (smooth colour field + texture noise); returns its size in bytes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = _SIZES[rng.choice(len(_SIZES), p=_SIZE_P)]
    grid = (rng.random((int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3)) * 255).astype(np.uint8)
    field = np.asarray(Image.fromarray(grid).resize((w, h), Image.BICUBIC), dtype=np.float32)
    pixels = np.clip(field + rng.normal(0.0, noise, (h, w, 3)).astype(np.float32), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, "JPEG", quality=quality)
    return os.path.getsize(path)


def _make_one(args):
    return _one_jpeg(*args)


def make_jpegs(
    out: os.PathLike | str, images: int, classes: int, *, seed: int = 0, quality: int = 93, noise: float = 22.0,
    workers: Optional[int] = None,
) -> dict:
    """Write ``images`` JPEGs into ``out/<class>/<n>.jpg`` over ``classes`` class folders (round robin), with
    ImageNet's common sizes (mostly 500x375 and 375x500). ``noise`` (pixel std) and ``quality`` set the file size:
    the defaults give ~110 KB per image, as ImageNet's train set. Returns ``{"images", "classes", "mean_kb"}``."""
    if images < 1 or classes < 1 or classes > images:
        raise ValueError(f"need images >= classes >= 1, got images={images} classes={classes}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    out = Path(out)
    width = len(str(classes - 1))
    for c in range(classes):
        (out / f"class_{c:0{width}d}").mkdir(parents=True, exist_ok=True)
    jobs = [(str(out / f"class_{i % classes:0{width}d}" / f"{i:08d}.jpg"), seed * 1_000_003 + i, quality, noise)
            for i in range(images)]
    workers = workers or min(os.cpu_count() or 1, 32)
    if workers > 1 and images >= 64:
        from multiprocessing import get_context

        with get_context("spawn").Pool(workers) as pool:
            sizes = pool.map(_make_one, jobs, chunksize=64)
    else:
        sizes = [_make_one(j) for j in jobs]
    return {"images": images, "classes": classes, "mean_kb": float(np.mean(sizes)) / 1024}


def timed_batches(workers: int, batches: Optional[int]) -> int:
    """How many batches to time for a loader of ``workers`` processes: ``batches``, or by default ``10 x
    workers`` (at least 20). Raises ValueError for a count so small that batches the workers finished before
    the clock started would dominate it (fewer than ``4 x workers``)."""
    if batches is None:
        return max(20, 10 * workers)
    if batches < 1:
        raise ValueError(f"batches must be >= 1, got {batches}")
    if batches < 4 * workers:
        raise ValueError(f"--batches {batches} is too few to time {workers} loader workers, which finish up to "
                         f"{workers} batches ahead of the clock: time at least {4 * workers} "
                         f"(default {max(20, 10 * workers)})")
    return batches


def _time_loader(batches, count: int, warmup: int, sync) -> tuple[float, int, int]:
    """(seconds, images, skipped) over ``count`` batches after ``warmup`` untimed ones (workers starting, the
    prefetched burst drained)."""
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    sync()
    t0, n, skipped = time.perf_counter(), 0, 0
    for _ in range(count):
        batch = next(it)
        if batch is not None:
            n += len(batch[1])
            skipped += len(getattr(batch, "skipped", ()))
    sync()
    return time.perf_counter() - t0, n, skipped


def _loader(dataset, batch_size: int, workers: int, collate_fn, pin: bool):
    from torch.utils.data import DataLoader, RandomSampler

    # sample with replacement so any number of timed batches fits a small folder
    sampler = RandomSampler(dataset, replacement=True, num_samples=10**9, generator=torch.Generator().manual_seed(0))
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate_fn,
                      pin_memory=pin, drop_last=True, persistent_workers=False,
                      prefetch_factor=_PREFETCH_FACTOR if workers > 0 else None)


def _sync(device: torch.device):
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def _row(folder, pipeline: str, workers: int, seconds: float, n: int, skipped: int, count: int, warmup: int,
         device: torch.device, **extra) -> dict:
    if n == 0:  # a rate of 0 images/s would read as a measurement
        raise ValueError(f"{folder}: no image could be read in {count} timed batches of the {pipeline} pipeline "
                         "(every file drawn was skipped as unreadable)")
    return {"pipeline": pipeline, "workers": workers, "images": n, "seconds": seconds,
            "images_per_s": n / seconds, "skipped": skipped, "device": str(device), "batches": count,
            "warmup": warmup, **extra}


def bench_cpu_pipeline(folder, workers: int, *, batch_size: int = 128, batches: Optional[int] = None,
                       warmup: int = 3, img_size: int = 224, auto_augment: Optional[str] = "rand-m9-mstd0.5-inc1",
                       re_prob: float = 0.25, device: str = "cpu") -> dict:
    """images/s of the CPU pipeline (PIL + timm transforms in ``workers`` DataLoader workers), batches copied
    to ``device``. ``batches``: timed batches (default and minimum: :func:`timed_batches`); ``warmup``: untimed
    ones, raised to the loader's depth (``workers x 4``)."""
    from rmeeto.data import ImageFolderDataset, collate_skip_none, train_transform

    device = torch.device(device)
    count, warmup = timed_batches(workers, batches), max(warmup, workers * _PREFETCH_FACTOR)
    dataset = ImageFolderDataset(folder, train_transform(img_size, auto_augment=auto_augment, re_prob=re_prob))
    loader = _loader(dataset, batch_size, workers, collate_skip_none, device.type == "cuda")
    moved = (None if b is None else type(b)(b[0].to(device, non_blocking=True), b[1].to(device), b.skipped)
             for b in loader)
    seconds, n, skipped = _time_loader(moved, count, warmup, _sync(device))
    return _row(folder, "cpu", workers, seconds, n, skipped, count, warmup, device)


def bench_gpu_pipeline(folder, workers: int, *, batch_size: int = 128, batches: Optional[int] = None,
                       warmup: int = 3, img_size: int = 224, auto_augment: Optional[str] = "rand-m9-mstd0.5-inc1",
                       re_prob: float = 0.25, device: str = "cuda", prefetch: int = 2) -> dict:
    """images/s of :mod:`rmeeto.gpu_data` on ``device`` (``workers`` processes read the files; decoding and
    augmentation run ``prefetch`` batches ahead in the loader's thread, as in training). ``batches`` and
    ``warmup`` as :func:`bench_cpu_pipeline` (the depth counts the thread's ``prefetch`` batches too)."""
    from rmeeto.gpu_data import DeviceLoader, build_gpu_pipeline

    device = torch.device(device)
    count = timed_batches(workers, batches)
    warmup = max(warmup, workers * _PREFETCH_FACTOR + prefetch)
    pipe = build_gpu_pipeline(folder, train=True, img_size=img_size, auto_augment=auto_augment, re_prob=re_prob,
                              device=device)
    loader = _loader(pipe.dataset, batch_size, workers, pipe.collate_fn, False)
    seconds, n, skipped = _time_loader(DeviceLoader(loader, pipe.transform, prefetch=prefetch), count, warmup,
                                       _sync(device))
    return _row(folder, "gpu", workers, seconds, n, skipped, count, warmup, device, prefetch=prefetch)


def bench_data(folder, *, workers: Sequence[int] = (1, 2, 4), gpu_workers: Optional[int] = None,
               device: str = "auto", batch_size: int = 128, batches: Optional[int] = None, warmup: int = 3,
               img_size: int = 224, auto_augment: Optional[str] = "rand-m9-mstd0.5-inc1",
               re_prob: float = 0.25) -> list[dict]:
    """One row per CPU worker count in ``workers``, plus the device pipeline's row when ``device`` resolves to
    CUDA with nvJPEG decoding (``gpu_workers`` reader processes, default ``max(workers)``; forced on a CPU
    device with ``device="cpu-gpu-path"``, for tests)."""
    from rmeeto.gpu_data import gpu_decode_available

    if not workers or min(workers) < 0:
        raise ValueError(f"workers must be a non-empty list of counts >= 0, got {list(workers)}")
    if batch_size < 1 or (batches is not None and batches < 1) or warmup < 0:
        raise ValueError("batch_size and batches must be >= 1, warmup >= 0")
    from rmeeto.runtime import resolve_device

    force_batched = device == "cpu-gpu-path"
    device = str(resolve_device("cpu" if force_batched else device))  # ValueError: malformed, or CUDA not there
    gpu_row = force_batched or (device.startswith("cuda") and gpu_decode_available(device))
    gpu_workers = gpu_workers if gpu_workers is not None else max(workers)
    for w in list(workers) + ([gpu_workers] if gpu_row else []):
        timed_batches(w, batches)  # refuse a too-small count before spending minutes on the first rows
    common = dict(batch_size=batch_size, batches=batches, warmup=warmup, img_size=img_size,
                  auto_augment=auto_augment, re_prob=re_prob)
    rows = [bench_cpu_pipeline(folder, w, device=device, **common) for w in workers]
    if gpu_row:
        rows.append(bench_gpu_pipeline(folder, gpu_workers, device=device, **common))
    return rows


def format_rows(rows: Sequence[dict]) -> str:
    lines = [f"{'pipeline':<9} {'workers':>7} {'images/s':>10} {'images':>7} {'seconds':>8} {'skipped':>7} "
             f"{'timed':>6} {'warmup':>6}"]
    for r in rows:
        lines.append(f"{r['pipeline']:<9} {r['workers']:>7} {r['images_per_s']:>10.1f} {r['images']:>7} "
                     f"{r['seconds']:>8.2f} {r['skipped']:>7} {r.get('batches', ''):>6} {r.get('warmup', ''):>6}")
    return "\n".join(lines)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options (shared by ``python -m rmeeto.bench_data run`` and the CLI module)."""
    p.add_argument("--workers", type=comma_nonneg_ints, default=None,
                   help="CPU worker counts to time, comma-separated (default 1,2,4,... up to the core count)")
    p.add_argument("--gpu-workers", type=nonneg_int, default=None,
                   help="file readers for the GPU path (default: max)")
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--batches", type=positive_int, default=None,
                   help="timed batches per row (default 10 x workers, at least 20; fewer than 4 x workers is refused)")
    p.add_argument("--warmup", type=nonneg_int, default=3,
                   help="untimed batches per row (raised to what the workers prefetch: 4 x workers)")
    p.add_argument("--img-size", type=positive_int, default=224)
    p.add_argument("--aa", type=auto_augment_policy, default="rand-m9-mstd0.5-inc1",
                   help="timm auto-augment policy ('none' for ColorJitter)")
    p.add_argument("--reprob", type=float, default=0.25)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cuda:N or cpu")


def default_workers() -> list[int]:
    cores = os.cpu_count() or 1
    counts = [2**k for k in range(int(math.log2(cores)) + 1)]
    return counts + ([cores] if counts[-1] != cores else [])


def run_from_args(args: argparse.Namespace) -> list[dict]:
    folder = Path(args.folder)
    if not folder.is_dir():
        raise ValueError(f"data folder {folder} does not exist or is not a folder")
    return bench_data(folder, workers=args.workers or default_workers(), gpu_workers=args.gpu_workers,
                      device=args.device, batch_size=args.batch_size, batches=args.batches, warmup=args.warmup,
                      img_size=args.img_size, auto_augment=args.aa,
                      re_prob=args.reprob)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rmeeto.bench_data", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    mk = sub.add_parser("make-jpegs", help="write an ImageNet-like JPEG folder OUT/<class>/<image>.jpg")
    mk.add_argument("out")
    mk.add_argument("--images", type=int, default=12800)
    mk.add_argument("--classes", type=int, default=100)
    mk.add_argument("--seed", type=seed_int, default=0)
    mk.add_argument("--quality", type=int, default=93)
    mk.add_argument("--noise", type=float, default=22.0, help="texture noise std (sets the file size)")
    mk.add_argument("--workers", type=int, default=None, help="processes (default: all cores, at most 32)")
    rn = sub.add_parser("run", help="time the input pipelines over a JPEG folder")
    rn.add_argument("folder")
    add_run_arguments(rn)
    args = parser.parse_args(argv)
    try:
        if args.command == "make-jpegs":
            t0 = time.perf_counter()
            info = make_jpegs(args.out, args.images, args.classes, seed=args.seed, quality=args.quality,
                              noise=args.noise, workers=args.workers)
            print(f"wrote {info['images']} JPEGs in {info['classes']} classes to {args.out} "
                  f"(mean {info['mean_kb']:.1f} KB) in {time.perf_counter() - t0:.1f} s")
        else:
            print(format_rows(run_from_args(args)))
    except ValueError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

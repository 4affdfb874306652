"""The batched device input pipeline (rmeeto.gpu_data) run on CPU tensors: parity with the PIL path (eval
protocol, each RandAugment op against timm's PIL op), odd and broken files handled as the CPU path handles them,
determinism from per-sample seeds, and the data benchmark's JPEG generator. The CUDA decode is compared in
test_gpu_data_cuda.py."""

from __future__ import annotations

import contextlib
import io
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from rmeeto.data import Batch, ImageFolderDataset, SkipLog, SkippedSample, eval_transform, read_rgb
from rmeeto.gpu_data import (
    _OPS,
    DeviceLoader,
    EncodedBatch,
    EncodedImageFolder,
    GpuEvalTransform,
    GpuTrainTransform,
    RandAugmentPolicy,
    _rrc_box,
    build_gpu_pipeline,
    collate_encoded,
    decode_images,
    resolve_pipeline,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _photo(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth colour field plus texture: uint8 [h, w, 3], JPEG-friendly like a photo."""
    grid = Image.fromarray((rng.random((5, 7, 3)) * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    return np.clip(np.asarray(grid, dtype=np.float32) + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Six RGB JPEGs (two classes, various sizes) and one PNG."""
    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir()
        for i in range(3):
            h, w = int(rng.integers(70, 130)), int(rng.integers(70, 150))
            Image.fromarray(_photo(rng, h, w)).save(root / c / f"{i}.jpg", quality=90)
    Image.fromarray(_photo(rng, 90, 80)).save(root / "dog" / "3.png")
    return root


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory):
    """One good JPEG and every odd kind of file: grey/CMYK JPEG, 16-bit/RGBA PNG (converted); truncated JPEG,
    a text file, an empty file (skipped)."""
    root = tmp_path_factory.mktemp("odd")
    (root / "a").mkdir()
    rng = np.random.default_rng(1)
    rgb = _photo(rng, 60, 80)
    Image.fromarray(rgb).save(root / "a" / "good.jpg", quality=90)
    Image.fromarray(rgb[..., 0]).save(root / "a" / "grey.jpg")
    Image.fromarray(rgb).convert("CMYK").save(root / "a" / "cmyk.jpg")
    Image.fromarray((rgb[..., 1].astype(np.uint16) * 257)).save(root / "a" / "deep16.png")
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(root / "a" / "rgba.png")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=90)
    (root / "a" / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "a" / "notes.jpg").write_bytes(b"this is not an image at all")
    (root / "a" / "empty.jpg").write_bytes(b"")
    return root


def _batch(dataset, keys):
    return collate_encoded([dataset[k] for k in keys])


# --------------------------------------------------------------------------------------------- selection


def test_auto_pipeline_decodes_on_the_gpu_only_where_cpu_workers_are_too_few(monkeypatch):
    import rmeeto.gpu_data as gd

    monkeypatch.setattr(gd, "gpu_decode_available", lambda device="cuda": True)
    monkeypatch.setattr(gd.os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # 16 cores per GPU process
    assert gd.cpu_workers_per_rank() == 16
    assert gd.cpu_workers_per_rank(6) == 6
    assert resolve_pipeline("auto", "cuda", "/data", workers=15) == "cpu"
    assert resolve_pipeline("auto", "cuda", "/data", workers=4) == "cpu"
    assert resolve_pipeline("auto", "cuda", "/data", workers=3) == "gpu"
    assert resolve_pipeline("auto", "cuda", "/data", workers=0) == "gpu"
    assert resolve_pipeline("auto", "cuda", "/data") == "cpu"  # no -j: the cores decide
    assert resolve_pipeline("auto", "cuda", "digits", workers=0) == "cpu"  # built-in sets are tensors
    assert resolve_pipeline("auto", "cpu", "/data", workers=0) == "cpu"
    assert resolve_pipeline("cpu", "cuda", "/data", workers=0) == "cpu"  # explicit choices stand
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")  # 2 cores per process: -j 15 cannot run 15 at once
    assert gd.cpu_workers_per_rank(15) == 2
    assert resolve_pipeline("auto", "cuda", "/data", workers=15) == "gpu"
    monkeypatch.setattr(gd, "gpu_decode_available", lambda device="cuda": False)  # no nvJPEG
    assert resolve_pipeline("auto", "cuda", "/data", workers=0) == "cpu"


def test_resolve_pipeline():
    assert resolve_pipeline("auto", "cpu", "/data") == "cpu"
    assert resolve_pipeline("gpu", "cpu", "/data") == "gpu"  # the batched code on the CPU (tests)
    assert resolve_pipeline("cpu", "cpu", "/data") == "cpu"
    assert resolve_pipeline("auto", "cpu", "digits") == "cpu"
    with pytest.raises(ValueError, match="pipeline must be one of auto, cpu, gpu"):
        resolve_pipeline("dali", "cpu")
    with pytest.raises(ValueError, match="built-in tensor dataset"):
        resolve_pipeline("gpu", "cpu", "synthetic")


# --------------------------------------------------------------------------------------------- eval parity


def test_eval_matches_cpu_eval_transform(folder):
    """Same images as data.eval_transform (PIL): decoding is bit-exact (same libjpeg), the antialiased bicubic
    resize is torch's float version of PIL's fixed-point one: at most a few levels of 255 apart, ~0.2 on
    average. Tolerance: max 6 levels, mean 0.5 level (in 0..255 pixel units)."""
    pipe = build_gpu_pipeline(folder, train=False, img_size=64, crop_pct=0.875, device="cpu")
    batch = pipe.transform(_batch(pipe.dataset, range(len(pipe.dataset))))
    reference = ImageFolderDataset(folder, eval_transform(64, MEAN, STD, 0.875))
    expected = torch.stack([reference[i][0] for i in range(len(reference))])
    assert batch.images.shape == expected.shape == (7, 3, 64, 64) and batch.images.dtype == torch.float32
    assert batch.labels.tolist() == reference.targets
    levels = (batch.images - expected).abs() * torch.tensor(STD).view(1, 3, 1, 1) * 255
    assert levels.max() <= 6 and levels.mean() <= 0.5, (levels.max(), levels.mean())


def test_eval_transform_rejects_bad_settings():
    with pytest.raises(ValueError, match="crop_pct must be in"):
        GpuEvalTransform(224, crop_pct=1.5)
    with pytest.raises(ValueError, match="interpolation must be one of"):
        GpuEvalTransform(224, interpolation="lanczos")


# --------------------------------------------------------------------------------------------- train path


def test_train_output_shapes_ranges_and_labels(folder):
    pipe = build_gpu_pipeline(folder, train=True, img_size=48, re_prob=0.0, device="cpu")
    batch = pipe.transform(_batch(pipe.dataset, [(i, 100 + i) for i in range(len(pipe.dataset))]))
    images, labels = batch
    assert images.shape == (7, 3, 48, 48) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.tolist() == pipe.dataset.targets
    # without erasing every pixel is a normalised 0..255 value
    lo = (0 - torch.tensor(MEAN)) / torch.tensor(STD)
    hi = (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert (images >= lo.view(1, 3, 1, 1) - 1e-5).all() and (images <= hi.view(1, 3, 1, 1) + 1e-5).all()
    pixels = images * torch.tensor(STD).view(1, 3, 1, 1) * 255 + torch.tensor(MEAN).view(1, 3, 1, 1) * 255
    assert torch.allclose(pixels, pixels.round(), atol=1e-3)  # whole levels, as PIL's uint8 images


def test_same_seeds_same_batch_other_step_differs_and_samples_independent(folder):
    pipe = build_gpu_pipeline(folder, train=True, img_size=48, re_prob=0.5, device="cpu")
    keys = [(i, 7_000 + i) for i in range(6)]
    a = pipe.transform(_batch(pipe.dataset, keys))
    b = pipe.transform(_batch(pipe.dataset, keys))
    assert torch.equal(a.images, b.images)
    other = pipe.transform(_batch(pipe.dataset, [(i, 9_000 + i) for i in range(6)]))  # next epoch/step's seeds
    assert not torch.equal(a.images, other.images)
    # without erasing noise (seeded per batch) a sample does not depend on its batch mates: resume / workers /
    # world size cannot change it
    pipe0 = build_gpu_pipeline(folder, train=True, img_size=48, re_prob=0.0, device="cpu")
    full = pipe0.transform(_batch(pipe0.dataset, keys))
    alone = pipe0.transform(_batch(pipe0.dataset, keys[3:4]))
    assert torch.equal(full.images[3], alone.images[0])


def test_random_erasing_boxes(folder):
    """re_prob 1: each image differs from its un-erased self in exactly one rectangle of 2-34 % of the area."""
    keys = [(i, 50 + i) for i in range(6)]
    base = build_gpu_pipeline(folder, train=True, img_size=48, re_prob=0.0, device="cpu")
    erased = build_gpu_pipeline(folder, train=True, img_size=48, re_prob=1.0, device="cpu")
    x0 = base.transform(_batch(base.dataset, keys)).images
    x1 = erased.transform(_batch(erased.dataset, keys)).images
    for a, b in zip(x0, x1):
        changed = (a != b).any(0)
        rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
        assert len(rows) and len(cols)
        box = changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.float().mean() > 0.95  # a filled rectangle (noise equal to a pixel is vanishingly rare)
        assert 0.015 <= box.numel() / changed.numel() <= 0.34


def test_color_jitter_without_auto_augment(folder):
    keys = [(i, 11 + i) for i in range(6)]
    plain = GpuTrainTransform(48, auto_augment=None, re_prob=0.0, color_jitter=0.0)
    jitter = GpuTrainTransform(48, auto_augment=None, re_prob=0.0, color_jitter=0.3)
    ds = EncodedImageFolder(folder)
    a, b = plain(_batch(ds, keys)).images, jitter(_batch(ds, keys)).images
    assert a.shape == b.shape and not torch.equal(a, b)


def test_small_images_use_pad_crop(folder):
    out = GpuTrainTransform(32, auto_augment=None, re_prob=0.0, color_jitter=0.0)(
        _batch(EncodedImageFolder(folder), [(i, i) for i in range(7)]))
    assert out.images.shape == (7, 3, 32, 32)


def test_rrc_boxes_follow_scale_and_ratio():
    rng = random.Random(0)
    fallback = 0
    for _ in range(500):
        top, left, h, w = _rrc_box(rng, 300, 400, (0.08, 1.0), (3 / 4, 4 / 3))
        assert 0 <= top and top + h <= 300 and 0 <= left and left + w <= 400
        if (h, w) == (300, 400):
            fallback += 1
            continue
        assert 0.07 <= h * w / 120_000 <= 1.0 and 0.72 <= w / h <= 1.36
    assert fallback < 100
    # a very wide image falls back to the widest allowed centre crop
    assert _rrc_box(random.Random(0), 10, 1000, (0.99, 1.0), (3 / 4, 4 / 3)) == (0, 493, 10, 13)


# --------------------------------------------------------------------------------------------- RandAugment


def test_policy_parse_and_sampling():
    p = RandAugmentPolicy.parse("rand-m9-mstd0.5-inc1")
    assert (p.magnitude, p.num_layers, p.magnitude_std, p.increasing, p.prob) == (9, 2, 0.5, True, 0.5)
    assert "PosterizeIncreasing" in p.ops and "Posterize" not in p.ops
    with pytest.raises(ValueError, match="unknown RandAugment section"):
        RandAugmentPolicy.parse("rand-m9-zz3")
    with pytest.raises(ValueError, match="RandAugment"):
        RandAugmentPolicy.parse("original-mstd0.5")
    rng = random.Random(0)
    plans = [p.sample(rng) for _ in range(4000)]
    applied = sum(len(x) for x in plans) / (2 * len(plans))
    assert 0.47 < applied < 0.53  # each of the 2 layers applied with probability 0.5
    names = {n for plan in plans for n, _ in plan}
    assert names == set(p.ops)  # uniform choice over all 15 ops
    rotations = [a for plan in plans for n, a in plan if n == "Rotate"]
    degrees = np.abs(rotations)  # magnitude 9 +- 0.5, clipped to 10 -> 27 +- 1.5 degrees, at most 30
    assert degrees.max() <= 30 and abs(degrees.mean() - 27) < 0.5 and 1.0 < degrees.std() < 2.0
    assert min(rotations) < 0 < max(rotations)


_OP_ARGS = {"AutoContrast": None, "Equalize": None, "Invert": None, "PosterizeIncreasing": 2,
            "SolarizeIncreasing": 40, "SolarizeAdd": 99, "ColorIncreasing": 1.7, "ContrastIncreasing": 0.3,
            "BrightnessIncreasing": 1.6, "SharpnessIncreasing": 1.8,
            "Rotate": 17.0, "ShearX": -0.25, "ShearY": 0.2, "TranslateXRel": 0.3, "TranslateYRel": -0.2}


@pytest.mark.parametrize("name", list(_OP_ARGS))
def test_ops_match_timm_pil_ops(name):
    """Each tensor op against timm's PIL op on the same image: the colour ops are bit-exact; the geometric ones
    (grid_sample, bilinear here) agree on the median pixel and within 1.5 levels on average (the border fill
    is where they differ)."""
    import timm.data.auto_augment as taa

    rgb = _photo(np.random.default_rng(3), 48, 64)
    arg = _OP_ARGS[name]
    ref = taa.NAME_TO_OP[name](Image.fromarray(rgb), *(() if arg is None else (arg,)),
                               fillcolor=(124, 116, 104), resample=Image.BILINEAR)
    fn, geometric = _OPS[name]
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    a = torch.tensor([0.0 if arg is None else float(arg)])
    out = fn(x, a, torch.tensor([124.0, 116.0, 104.0]), "bilinear") if geometric else fn(x, a)
    diff = (out[0].permute(1, 2, 0) - torch.from_numpy(np.asarray(ref)).float()).abs()
    if geometric:
        assert diff.median() == 0 and diff.mean() < 1.5, (diff.median(), diff.mean())
    else:
        assert diff.max() == 0, diff.max()


# --------------------------------------------------------------------------------------------- odd files


def test_odd_files_converted_or_skipped_like_the_cpu_path(odd_folder):
    ds = EncodedImageFolder(odd_folder)
    cpu = ImageFolderDataset(odd_folder)
    names = [p.split("/")[-1] for p, _ in ds.samples]
    cpu_skipped = {cpu.samples[i][0] for i in range(len(cpu)) if isinstance(cpu[i], SkippedSample)}
    transform = GpuEvalTransform(32, crop_pct=1.0)
    batch = _batch(ds, range(len(ds)))
    images, skipped = decode_images(batch, "cpu")
    assert {s.path for s in skipped} == cpu_skipped == {str(odd_folder / "a" / n) for n in
                                                         ("truncated.jpg", "notes.jpg", "empty.jpg")}
    decoded = dict(zip([p.split("/")[-1] for p in batch.paths], images))
    assert set(decoded) == {"good.jpg", "grey.jpg", "cmyk.jpg", "deep16.png", "rgba.png"}
    for name, img in decoded.items():
        assert img.dtype == torch.uint8 and img.shape == (3, 60, 80), name
        expected = np.asarray(read_rgb(odd_folder / "a" / name))
        assert torch.equal(img.permute(1, 2, 0), torch.from_numpy(expected)), name  # the CPU path's RGB
    grey = decoded["grey.jpg"]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    # through a DataLoader and the device loader: 5 images out, the 3 bad files counted once each
    loader = DataLoader(ds, batch_size=4, collate_fn=collate_encoded)
    log, seen = SkipLog(), 0
    for out in DeviceLoader(loader, transform):
        log.update(out)
        seen += 0 if out is None else len(out.labels)
    assert seen == 5 and log.count == 3 and set(log.paths) == cpu_skipped
    assert names.count("truncated.jpg") == 1


def test_device_decode_failure_falls_back_then_skips(folder):
    """A file that looks like a complete JPEG to the worker but does not decode: the batched call fails, the
    other images are decoded one by one, PIL gets the bad one and it is skipped (never a crash)."""
    ds = EncodedImageFolder(folder)
    good = _batch(ds, [0, 1])
    bogus = torch.frombuffer(bytearray(b"\xff\xd8\xff\xe0" + b"\x00" * 40 + b"\xff\xd9"), dtype=torch.uint8)
    batch = EncodedBatch([good.data[0], bogus, good.data[1]], torch.tensor([0, 1, 0]), [1, 2, 3],
                         [good.paths[0], "/x/bogus.jpg", good.paths[1]], ())
    out = GpuEvalTransform(32, crop_pct=1.0)(batch)
    assert len(out.labels) == 2 and [s.path for s in out.skipped] == ["/x/bogus.jpg"]
    assert out.labels.tolist() == [0, 0]


def test_all_unreadable_batch_is_none(odd_folder):
    ds = EncodedImageFolder(odd_folder)
    bad = [i for i, (p, _) in enumerate(ds.samples) if p.endswith(("notes.jpg", "empty.jpg"))]
    assert collate_encoded([ds[i] for i in bad]) is None
    assert GpuTrainTransform(48)(None) is None


def test_plain_index_keys_use_the_dataset_seed(folder):
    a, b = EncodedImageFolder(folder, seed=1), EncodedImageFolder(folder, seed=2)
    assert a[3].seed != b[3].seed and a[3].seed == EncodedImageFolder(folder, seed=1)[3].seed
    assert a[(3, 42)].seed == 42


# --------------------------------------------------------------------------------------------- benchmark


def test_make_jpegs_and_bench_rows(tmp_path):
    from rmeeto.bench_data import bench_data, make_jpegs, main

    info = make_jpegs(tmp_path / "j", images=9, classes=3, workers=1)
    files = sorted((tmp_path / "j").rglob("*.jpg"))
    assert info["images"] == len(files) == 9 and len({f.parent.name for f in files}) == 3
    assert 60 < info["mean_kb"] < 170  # tuned to ImageNet's ~110 KB
    for f in files:
        with Image.open(f) as img:
            img.load()
            assert img.format == "JPEG" and img.mode == "RGB" and max(img.size) >= 333
    ds = ImageFolderDataset(tmp_path / "j")
    assert len(ds) == 9 and len(ds.classes) == 3
    rows = bench_data(tmp_path / "j", workers=(0,), device="cpu-gpu-path", batch_size=3, batches=1, warmup=0,
                      img_size=32)
    assert [r["pipeline"] for r in rows] == ["cpu", "gpu"]
    assert all(r["images"] == 3 and r["images_per_s"] > 0 and r["skipped"] == 0 for r in rows)
    with pytest.raises(ValueError, match="need images >= classes"):
        make_jpegs(tmp_path / "k", images=2, classes=3)
    assert main(["run", str(tmp_path / "missing")]) == 2


# --------------------------------------------------------------------------------------------- CUDA hygiene (mocked)


def test_cuda_decode_drains_the_stream_first_on_the_ranks_own_device(folder, monkeypatch):
    """torchvision allocates nvJPEG's outputs on the current stream, but writes them from its own stream
    without waiting for the current one (pytorch/vision#9606): the current stream must be drained first, or a
    block freed by still-queued kernels (the last step's activations) is overwritten under them. And an
    index-less 'cuda' must mean this rank's GPU (here 1), never GPU 0 of a thread that did not set it."""
    import torchvision.io

    calls = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)

    @contextlib.contextmanager
    def on_device(dev):
        calls.append(("device", str(torch.device(dev))))
        yield

    class _Stream:
        def __init__(self, dev):
            self.dev = dev

        def synchronize(self):
            calls.append(("sync", str(torch.device(self.dev))))

    def fake_decode(data, mode=None, device="cpu"):
        calls.append(("decode", str(torch.device(device))))
        return [torch.zeros(3, 4, 4, dtype=torch.uint8) for _ in data]

    monkeypatch.setattr(torch.cuda, "device", on_device)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda dev=None: _Stream(dev))
    monkeypatch.setattr(torchvision.io, "decode_jpeg", fake_decode)
    ds = EncodedImageFolder(folder)
    jpegs = [i for i, (p, _) in enumerate(ds.samples) if p.endswith(".jpg")][:3]
    images, skipped = decode_images(_batch(ds, jpegs), "cuda")
    assert len(images) == 3 and not skipped
    assert calls == [("device", "cuda:1"), ("sync", "cuda:1"), ("decode", "cuda:1")]


def test_rank_device_makes_the_index_explicit(monkeypatch):
    from rmeeto.gpu_data import _rank_device

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert _rank_device("cuda") == torch.device("cuda", 3)
    assert _rank_device("cuda:1") == torch.device("cuda", 1)  # an explicit index is kept
    assert _rank_device("cpu") == torch.device("cpu")


# --------------------------------------------------------------------------------------------- prefetching


def _keys_loader(dataset, keys, batch_size, workers, persistent=False):
    return DataLoader(dataset, batch_size=batch_size, sampler=keys, num_workers=workers,
                      collate_fn=collate_encoded, persistent_workers=persistent and workers > 0)


@pytest.mark.parametrize("workers", [0, 2])
def test_prefetching_yields_exactly_the_serial_batches(folder, workers):
    pipe = build_gpu_pipeline(folder, train=True, img_size=32, re_prob=0.5, device="cpu")
    keys = [(i % len(pipe.dataset), 100 + i) for i in range(12)]
    serial = list(DeviceLoader(_keys_loader(pipe.dataset, keys, 3, 0), pipe.transform, prefetch=0))
    ahead = list(DeviceLoader(_keys_loader(pipe.dataset, keys, 3, workers), pipe.transform, prefetch=2))
    assert len(serial) == len(ahead) == 4
    for a, b in zip(serial, ahead):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_iter_starts_the_loaders_iteration_and_the_transform_waits_for_the_first_batch(prefetch):
    """iter(DeviceLoader) creates the wrapped loader's iterator at once (a DataLoader's workers start reading
    while the trainer captures its CUDA graphs); the transform runs only once a batch is asked for."""
    events = []

    class Source:
        def __len__(self):
            return 2

        def __iter__(self):
            events.append("iter")
            return iter([1, 2])

    def transform(batch):
        events.append(f"transform {batch}")
        return batch

    it = iter(DeviceLoader(Source(), transform, prefetch=prefetch))
    assert events == ["iter"]
    assert list(it) == [1, 2]
    assert events == ["iter", "transform 1", "transform 2"]


def test_prefetch_depth_is_bounded_and_an_abandoned_iteration_stops_its_thread(folder):
    import threading
    import time

    pulled = []

    class Counting:
        def __len__(self):
            return 100

        def __iter__(self):
            for i in range(100):
                pulled.append(i)
                yield i

    def loader_threads():
        # only this loader's thread: threads left by earlier tests (DataLoader pin/worker watchers) end at their
        # own pace, so the process-wide count is not a measure of this one
        return [t for t in threading.enumerate() if t.name == "rmeeto-device-loader" and t.is_alive()]

    assert loader_threads() == []
    it = iter(DeviceLoader(Counting(), lambda b: b, prefetch=2))
    assert next(it) == 0
    assert len(loader_threads()) == 1
    time.sleep(0.3)  # let the thread run as far ahead as it may
    # one taken + 2 waiting in the queue + 1 the thread holds while the queue is full
    assert len(pulled) <= 4
    it.close()  # what a `break` out of the training loop does
    assert loader_threads() == []
    with pytest.raises(ValueError, match="prefetch must be >= 0"):
        DeviceLoader(Counting(), lambda b: b, prefetch=-1)


def test_an_error_in_the_prefetch_thread_is_raised_in_the_consumer():
    def transform(batch):
        if batch == 2:
            raise RuntimeError("decoder exploded on batch 2")
        return batch

    seen = []
    with pytest.raises(RuntimeError, match="decoder exploded on batch 2"):
        for batch in DeviceLoader([0, 1, 2, 3], transform, prefetch=2):
            seen.append(batch)
    assert seen == [0, 1]


def test_prefetched_epoch_resumed_mid_way_matches_the_uninterrupted_epoch(folder):
    """The training sampler's (index, seed) keys through persistent workers and the prefetch thread: an epoch
    broken off after 2 batches, then resumed from sample 6 in a new iteration of the same loader, gives the
    uninterrupted epoch's batches 2.. bit for bit (the abandoned iteration's thread must be gone before the
    persistent workers' iterator is reset)."""
    from torch.utils.data import DistributedSampler

    from rmeeto.train.data import ResumableSampler

    pipe = build_gpu_pipeline(folder, train=True, img_size=32, re_prob=0.5, device="cpu")
    sampler = ResumableSampler(DistributedSampler(pipe.dataset, num_replicas=1, rank=0, shuffle=True, seed=3),
                               seed=3)
    loader = DeviceLoader(DataLoader(pipe.dataset, batch_size=3, sampler=sampler, num_workers=2,
                                     collate_fn=collate_encoded, persistent_workers=True, drop_last=True),
                          pipe.transform, prefetch=2)
    sampler.set_epoch(1)
    full = list(loader)
    sampler.set_epoch(1)
    for k, _ in enumerate(loader):  # a run stopped after 2 batches (the thread has read further ahead)
        if k == 1:
            break
    sampler.set_epoch(1, start=3)  # resumed at sample 3 = batch 1
    resumed = list(loader)
    assert len(full) == 2 and len(resumed) == 1
    assert torch.equal(resumed[0].images, full[1].images) and torch.equal(resumed[0].labels, full[1].labels)


def test_cuda_stream_protocol_of_the_prefetch_thread(monkeypatch):
    """Mocked CUDA: the thread sets this rank's device (threads start on GPU 0), runs the transform under its
    own stream, records an event there; the consumer's stream of the same device waits for that event before
    the batch is handed out, and record_stream ties every tensor of it to the consumer's stream."""
    import threading

    calls, current = [], threading.local()

    class Stream:
        def __init__(self, device=None):
            self.name = f"side:{torch.device(device)}"

        def wait_event(self, event):
            calls.append(("wait", self.name, event.stream))

    class Consumer(Stream):
        def __init__(self, device):
            self.name = f"main:{torch.device(device)}"

    class Event:
        def record(self, stream):
            self.stream = stream.name
            calls.append(("record", stream.name))

    @contextlib.contextmanager
    def on_stream(stream):
        current.stream = stream.name
        yield
        current.stream = None

    class FakeTensor:
        def __init__(self, name):
            self.name = name

        def record_stream(self, stream):
            calls.append(("record_stream", self.name, stream.name))

    class Transform:
        device = torch.device("cuda", 1)

        def __call__(self, batch):
            calls.append(("transform", batch, getattr(current, "stream", None)))
            return Batch(FakeTensor(f"x{batch}"), FakeTensor(f"y{batch}"))

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "stream", on_stream)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", str(d))))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda d=None: Consumer(d))
    out = list(DeviceLoader([7], Transform(), prefetch=1))
    assert [b.images.name for b in out] == ["x7"]
    assert calls == [("set_device", "cuda:1"), ("transform", 7, "side:cuda:1"), ("record", "side:cuda:1"),
                     ("wait", "main:cuda:1", "side:cuda:1"), ("record_stream", "x7", "main:cuda:1"),
                     ("record_stream", "y7", "main:cuda:1")]


def test_tiny_images_never_get_an_empty_crop():
    """A 1x1 or 2x2 image used to round some RandomResizedCrop boxes to zero pixels, and resizing an empty crop
    raises (a crash instead of an augmented image). timm requires a non-empty box too."""
    for h, w in ((1, 1), (2, 2), (1, 3)):
        rng = random.Random(0)
        for _ in range(500):
            top, left, ch, cw = _rrc_box(rng, h, w, (0.08, 1.0), (3 / 4, 4 / 3))
            assert 0 < ch and 0 < cw and top + ch <= h and left + cw <= w
    dot = torch.full((3, 1, 1), 200, dtype=torch.uint8)
    batch = EncodedBatch([dot] * 8, torch.zeros(8, dtype=torch.int64), list(range(8)), ["/dot.png"] * 8, ())
    out = GpuTrainTransform(48, re_prob=0.0)(batch)
    assert out.images.shape == (8, 3, 48, 48) and torch.isfinite(out.images).all()


def test_bench_times_past_what_the_workers_prefetch(tmp_path, monkeypatch):
    """8 workers whose samples take 0.2 s each can deliver at most 40 images/s. Timing fewer batches than they
    finish in their first burst measured only queue pops (a 32-worker row once reported 54,300 images/s): such a
    count is refused, and the default count (after a warm-up past the prefetch depth) stays near the truth."""
    import time

    from rmeeto import data as rdata
    from rmeeto.bench_data import bench_cpu_pipeline, make_jpegs, timed_batches

    make_jpegs(tmp_path / "j", images=4, classes=2, workers=1)

    def slow_transform(*args, **kwargs):
        def transform(img):
            time.sleep(0.2)
            return torch.zeros(3, 8, 8)
        return transform

    monkeypatch.setattr(rdata, "train_transform", slow_transform)
    with pytest.raises(ValueError, match="too few to time 8 loader workers"):
        bench_cpu_pipeline(tmp_path / "j", 8, batch_size=1, batches=4, warmup=0)
    assert timed_batches(8, None) == 80 and timed_batches(0, None) == 20 and timed_batches(0, 1) == 1
    row = bench_cpu_pipeline(tmp_path / "j", 8, batch_size=1, warmup=0)
    assert (row["batches"], row["warmup"], row["images"]) == (80, 32, 80)
    assert row["images_per_s"] < 1.25 * 40


def test_a_batch_of_jpeg_bytes_crosses_from_a_worker_as_one_buffer(odd_folder):
    """Each tensor a loader worker returns costs a shared-memory file and descriptor in the training process;
    a batch's JPEG bytes are slices of one buffer, and decode the same as the files themselves."""
    ds = EncodedImageFolder(odd_folder)
    loader = DataLoader(ds, batch_size=len(ds), num_workers=1, collate_fn=collate_encoded)
    batch = next(iter(loader))
    jpegs = [d for d in batch.data if d.dim() == 1]
    assert len(jpegs) == 2  # good.jpg and grey.jpg go to the device decoder; the rest were decoded by PIL
    assert len({d.untyped_storage().data_ptr() for d in jpegs}) == 1
    for d, path in zip(batch.data, batch.paths):
        if d.dim() == 1:
            with open(path, "rb") as f:
                assert d.numpy().tobytes() == f.read()
    images, _ = decode_images(batch, "cpu")
    direct, _ = decode_images(collate_encoded([ds[i] for i in range(len(ds))]), "cpu")
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(images, direct))

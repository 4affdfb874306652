"""The device input pipeline on CUDA (nvJPEG decoding, augmentation on the GPU); skipped without a GPU."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rmeeto.gpu_data import (
    EncodedImageFolder,
    GpuEvalTransform,
    build_gpu_pipeline,
    collate_encoded,
    decode_images,
    gpu_decode_available,
    resolve_pipeline,
    cpu_workers_per_rank,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from rmeeto.bench_data import make_jpegs

    root = tmp_path_factory.mktemp("cuda_jpegs")
    make_jpegs(root / "train", images=24, classes=3, workers=1)
    odd = root / "train" / "class_0"
    rgb = np.asarray(Image.open(next(odd.glob("*.jpg"))).convert("RGB"))
    Image.fromarray(rgb[..., 0]).save(odd / "grey.jpg")
    Image.fromarray(rgb).convert("CMYK").save(odd / "cmyk.jpg")
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(odd / "rgba.png")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG")
    (odd / "truncated.jpg").write_bytes(buf.getvalue()[:5000])
    (odd / "text.jpg").write_bytes(b"not an image")
    return root / "train"


def test_nvjpeg_available_and_auto_decodes_on_the_gpu_with_few_workers():
    assert gpu_decode_available("cuda")
    assert resolve_pipeline("auto", "cuda", "/data", workers=1) == "gpu"
    assert resolve_pipeline("auto", "cuda", "/data", workers=64) == ("cpu" if cpu_workers_per_rank() >= 4 else "gpu")
    assert resolve_pipeline("gpu", "cuda", "/data") == "gpu"


def test_cuda_decode_matches_cpu_decode(folder):
    """nvJPEG vs libjpeg-turbo (the CPU path's decoder): the same size, pixels within a few levels (the IDCT and
    chroma upsampling differ slightly); odd files converted or skipped exactly as on the CPU."""
    ds = EncodedImageFolder(folder)
    batch = collate_encoded([ds[i] for i in range(len(ds))])
    on_gpu, skipped_gpu = decode_images(batch, "cuda")
    on_cpu, skipped_cpu = decode_images(batch, "cpu")
    assert {s.path for s in skipped_gpu} == {s.path for s in skipped_cpu} and len(skipped_gpu) == 2
    for g, c in zip(on_gpu, on_cpu):
        assert (g is None) == (c is None)
        if g is not None:
            assert g.device.type == "cuda" and g.shape == c.shape
            diff = (g.cpu().int() - c.int()).abs()
            # measured on an H200 (nvJPEG, torchvision 0.26): mean 4.2 levels on these noise-heavy test JPEGs,
            # where chroma upsampling differs most; a wrong colour space or channel order is tens of levels off
            assert diff.float().mean() < 6.0
            per_channel = (g.cpu().float() - c.float()).mean(dim=(1, 2)).abs()
            assert per_channel.max() < 2.0  # no systematic shift in any channel


def test_cuda_pipelines_match_cpu_runs_of_the_same_code(folder):
    """The same batched code on CUDA and on CPU from the same seeds: equal up to the decoder and float
    differences (eval: mean < 1 level; train: shapes, labels and near-equal pixels)."""
    ds = EncodedImageFolder(folder)
    keys = [(i, 1000 + i) for i in range(16)]
    for train in (False, True):
        cuda = build_gpu_pipeline(folder, train=train, img_size=224, re_prob=0.0, device="cuda").transform
        cpu = build_gpu_pipeline(folder, train=train, img_size=224, re_prob=0.0, device="cpu").transform
        a = cuda(collate_encoded([ds[k] for k in keys]))
        b = cpu(collate_encoded([ds[k] for k in keys]))
        assert a.images.is_cuda and a.images.shape == b.images.shape == (len(b.labels), 3, 224, 224)
        assert torch.equal(a.labels.cpu(), b.labels)
        levels = (a.images.cpu() - b.images).abs() * 0.225 * 255
        # the decoders differ by ~4 levels on these noise images (see above): 2.0 measured for eval on an H200
        assert levels.mean() < (3.0 if not train else 5.0), (train, levels.mean())


def test_cuda_same_seed_same_batch(folder):
    ds = EncodedImageFolder(folder)
    transform = build_gpu_pipeline(folder, train=True, img_size=224, re_prob=0.25, device="cuda").transform
    keys = [(i, 5 + i) for i in range(16)]
    x = transform(collate_encoded([ds[k] for k in keys])).images
    y = transform(collate_encoded([ds[k] for k in keys])).images
    assert torch.equal(x, y)


def test_cuda_eval_transform_skips_bad_bytes():
    bogus = torch.frombuffer(bytearray(b"\xff\xd8\xff\xe0" + b"\x00" * 40 + b"\xff\xd9"), dtype=torch.uint8)
    from rmeeto.gpu_data import EncodedBatch

    assert GpuEvalTransform(224, device="cuda")(EncodedBatch([bogus], torch.tensor([0]), [0], ["/x"], ())) is None


def _baseline_jpeg_batch(folder, count: int = 4):
    """A batch of the generated photo-like JPEGs only (baseline JPEGs: nvJPEG's hardware path on A100/H100/H200)."""
    ds = EncodedImageFolder(folder)
    picks = [i for i, (p, _) in enumerate(ds.samples) if Path(p).name[0].isdigit()][:count]
    return collate_encoded([ds[i] for i in picks])


def test_decode_does_not_write_over_memory_that_queued_kernels_still_read(folder):
    """The cause of the 2-GPU NaN: torchvision allocates nvJPEG's outputs on the current stream, but the decoder
    writes them from its own stream without waiting for the current one (pytorch/vision#9606). Blocks freed
    while kernels that read them are still queued (here: sums behind a 30 ms stall; in training: the eager DDP
    step's activations) were handed to the decoder and overwritten before those kernels ran. The pipeline drains
    the stream first: every queued sum must see the ones it was given."""
    batch = _baseline_jpeg_batch(folder)
    device = torch.device("cuda", torch.cuda.current_device())
    first, _ = decode_images(batch, device)
    sizes = [img.numel() for img in first]  # victims of exactly the decoded images' sizes: the allocator's pick
    del first
    wrong = 0
    for _ in range(20):
        victims = [torch.ones(n, dtype=torch.uint8, device=device) for n in sizes]
        torch.cuda._sleep(50_000_000)  # keep the stream busy so the sums below are still queued at the decode
        sums = [v.sum() for v in victims]
        del victims  # freed now, read later: the allocator may hand these blocks out at once on this stream
        images, _ = decode_images(batch, device)
        wrong += sum(int(s.item()) != n for s, n in zip(sums, sizes))
        del images
    assert wrong == 0


def test_cuda_prefetching_matches_serial_batches_on_a_busy_stream(folder):
    """The prefetch thread decodes and augments on its own stream; the consumer's stream must wait for each
    batch (here it is also kept busy, so a missing wait or record_stream would show as a changed batch)."""
    from torch.utils.data import DataLoader

    from rmeeto.gpu_data import DeviceLoader

    pipe = build_gpu_pipeline(folder, train=True, img_size=64, re_prob=0.25, device="cuda")
    keys = [(i % len(pipe.dataset), 50 + i) for i in range(24)]

    def loader(workers):
        return DataLoader(pipe.dataset, batch_size=6, sampler=keys, num_workers=workers,
                          collate_fn=pipe.collate_fn)

    serial = [(b.images.clone(), b.labels.clone()) for b in DeviceLoader(loader(0), pipe.transform, prefetch=0)]
    ahead = []
    for batch in DeviceLoader(loader(2), pipe.transform, prefetch=2):
        torch.cuda._sleep(20_000_000)
        ahead.append((batch.images * 1, batch.labels * 1))  # read on the consumer's stream
    assert len(ahead) == len(serial) == 4
    for (x, y), (rx, ry) in zip(ahead, serial):
        assert x.device == rx.device and torch.equal(x, rx) and torch.equal(y, ry)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_the_pipeline_of_the_second_gpu_stays_on_it(folder):
    """A rank on GPU 1: an index-less 'cuda' means the current device when the pipeline is built, and the
    prefetch thread (which starts on GPU 0) must decode, augment and deliver on GPU 1."""
    from torch.utils.data import DataLoader

    from rmeeto.gpu_data import DeviceLoader

    previous = torch.cuda.current_device()
    torch.cuda.set_device(1)
    try:
        pipe = build_gpu_pipeline(folder, train=True, img_size=64, device="cuda")
        loader = DataLoader(pipe.dataset, batch_size=6, sampler=[(i, i) for i in range(12)],
                            collate_fn=pipe.collate_fn)
        batches = list(DeviceLoader(loader, pipe.transform, prefetch=2))
    finally:
        torch.cuda.set_device(previous)
    assert len(batches) == 2
    assert all(b.images.device == torch.device("cuda", 1) == b.labels.device for b in batches)
    assert all(torch.isfinite(b.images).all() for b in batches)

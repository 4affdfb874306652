"""The device input pipeline on CUDA (nvJPEG decoding, augmentation on the GPU); skipped without a GPU."""

from __future__ import annotations

import io

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


def test_nvjpeg_available_and_auto_stays_on_the_cpu_pipeline():
    assert gpu_decode_available("cuda")
    assert resolve_pipeline("auto", "cuda", "/data") == "cpu"  # opt-in until it is faster (see resolve_pipeline)
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

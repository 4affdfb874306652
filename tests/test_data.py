"""Datasets: embedded digits (shapes, deterministic stratified split, augmentation) and image folders
(unreadable files skipped and counted, clear errors)."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from rmeeto.data import (
    Batch,
    DataError,
    DigitsDataset,
    ImageFolderDataset,
    SkipLog,
    SkippedSample,
    build_dataset,
    collate_skip_none,
    digits_pil_images,
    eval_transform,
)


# ------------------------------------------------------------------------------------------------- digits


def test_digits_shapes_values_and_split():
    train, val = DigitsDataset("train"), DigitsDataset("val")
    assert len(train) + len(val) == 1797 and len(val) == 360
    assert set(train.indices.tolist()).isdisjoint(val.indices.tolist())
    image, label = train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and isinstance(label, int)
    assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])  # grey replicated
    assert image.min() >= -1 and image.max() <= 1  # [0, 1] normalised with mean = std = 0.5
    counts = np.bincount(val.labels.numpy(), minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: 20 % of each class
    again = DigitsDataset("val")
    assert np.array_equal(again.indices, val.indices) and torch.equal(again[5][0], val[5][0])


def test_digits_img_size_and_pil_images():
    ds = DigitsDataset("val", img_size=16)
    assert ds[0][0].shape == (3, 16, 16)
    (image, label), = digits_pil_images("val", img_size=16, indices=[3])
    assert image.size == (16, 16) and image.mode == "RGB" and label == int(ds.labels[3])
    pixels = torch.tensor(np.asarray(image)).permute(2, 0, 1).float() / 255
    assert torch.allclose(pixels * 2 - 1, ds[3][0], atol=1 / 255 * 2 + 1e-6)


def test_digits_augmentation_shifts_only_when_asked():
    plain, shifted = DigitsDataset("train"), DigitsDataset("train", augment=True)
    assert torch.equal(plain[0][0], plain[0][0])
    torch.manual_seed(0)
    outs = [shifted[0][0] for _ in range(20)]
    assert any(not torch.equal(o, plain[0][0]) for o in outs)
    # a shift moves ink, it does not change how much there is (digits have a 2+ px blank border at 32 px)
    assert all(torch.allclose((o + 1).sum(), (plain[0][0] + 1).sum(), rtol=0.05) for o in outs)


# ------------------------------------------------------------------------------------------------- folders


def write_image(path, size=(20, 24), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(len(str(path))).integers(0, 255, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)


@pytest.fixture
def folder(tmp_path):
    """root/train/{cat,dog}/ with 3 good images each + one random-bytes .jpg and one truncated JPEG;
    root/val/{cat,dog}/ with one image each."""
    root = tmp_path / "data"
    for cls in ("cat", "dog"):
        for i in range(3):
            write_image(root / "train" / cls / f"{i}.jpg")
        write_image(root / "val" / cls / "v.png")
    (root / "train" / "cat" / "x.jpg").write_bytes(np.random.default_rng(0).bytes(600))  # seeded garbage
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(buf, format="JPEG")
    (root / "train" / "dog" / "trunc.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return root


def test_folder_classes_and_order_match_imagefolder(folder):
    ds = ImageFolderDataset(folder / "train")
    assert ds.classes == ["cat", "dog"] and ds.class_to_idx == {"cat": 0, "dog": 1}
    names = [os.path.basename(p) for p, _ in ds.samples]
    assert names == ["0.jpg", "1.jpg", "2.jpg", "x.jpg", "0.jpg", "1.jpg", "2.jpg", "trunc.jpg"]
    assert ds.targets == [0, 0, 0, 0, 1, 1, 1, 1]


def test_unreadable_images_are_skipped_counted_and_reported_once(folder, caplog):
    ds = build_dataset(folder, "train", img_size=16)
    caplog.set_level(logging.WARNING, logger="rmeeto.data")
    bad = {i for i, (p, _) in enumerate(ds.samples) if os.path.basename(p) in ("x.jpg", "trunc.jpg")}
    for i in bad:
        assert isinstance(ds[i], SkippedSample)
        ds[i]  # a second read is not reported again
    reports = [r for r in caplog.records if "skipping unreadable image" in r.getMessage()]
    assert len(reports) == 2 and all("\n" not in r.getMessage() for r in reports)
    assert any("trunc.jpg" in r.getMessage() and "truncated" in r.getMessage().lower() for r in reports)

    log, seen = SkipLog(), 0
    for epoch in range(2):
        for batch in DataLoader(ds, batch_size=3, collate_fn=collate_skip_none):
            log.update(batch)
            if batch is None:
                continue
            images, labels = batch
            assert isinstance(batch, Batch) and images.shape[1:] == (3, 16, 16)
            seen += len(labels)
    assert seen == 2 * 6 and log.count == 2
    assert sorted(os.path.basename(p) for p in log.paths) == ["trunc.jpg", "x.jpg"]
    assert log.summary().startswith("skipped 2 unreadable images")


def test_collate_drops_skipped_and_returns_none_for_an_all_bad_batch():
    good = (torch.zeros(3, 4, 4), 1)
    bad = SkippedSample("a.jpg", "OSError: broken")
    batch = collate_skip_none([good, bad, None, good])
    images, labels = batch
    assert images.shape == (2, 3, 4, 4) and labels.tolist() == [1, 1] and batch.skipped == (bad,)
    assert collate_skip_none([bad, None]) is None
    import pickle

    copy = pickle.loads(pickle.dumps(batch))  # as through a DataLoader worker queue
    assert copy.skipped == (bad,) and torch.equal(copy.images, images)


def test_worker_loader_counts_skips(folder):
    ds = build_dataset(folder, "train", img_size=16)
    log = SkipLog()
    n = 0
    for batch in DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate_skip_none):
        log.update(batch)
        n += 0 if batch is None else len(batch.labels)
    assert n == 6 and log.count == 2


def test_split_folders_and_direct_class_folders(folder):
    assert len(build_dataset(folder, "val", img_size=16)) == 2
    direct = build_dataset(folder / "val", "train", img_size=16)  # no train/val inside: class folders directly
    assert direct.classes == ["cat", "dog"]
    image, label = direct[0]
    assert image.shape == (3, 16, 16) and label == 0


def test_folder_errors_are_one_line_and_name_the_path(tmp_path, folder):
    (tmp_path / "only_train" / "train" / "cls").mkdir(parents=True)
    write_image(tmp_path / "only_train" / "train" / "cls" / "a.png")
    (tmp_path / "empty_class" / "a").mkdir(parents=True)
    (tmp_path / "empty_class" / "b").mkdir()
    write_image(tmp_path / "empty_class" / "a" / "1.png")
    (tmp_path / "no_classes").mkdir()
    (tmp_path / "no_classes" / "loose.png").write_bytes(b"")
    cases = [
        (tmp_path / "missing", "train", "not found"),
        (tmp_path / "only_train", "val", "has no 'val' subfolder (found: train)"),
        (tmp_path / "empty_class", "train", "class folder with no images in"),
        (tmp_path / "no_classes", "train", "holds no class folders"),
        (folder / "train" / "cat" / "0.jpg", "train", "is not a folder"),
    ]
    for path, split, expected in cases:
        with pytest.raises(DataError) as info:
            build_dataset(path, split, img_size=16)
        message = str(info.value)
        assert expected in message and "\n" not in message, message
        assert str(path) in message or repr(str(path)) in message
    assert "b" in str(pytest.raises(DataError, ImageFolderDataset, tmp_path / "empty_class").value)
    with pytest.raises(ValueError, match="split must be one of"):
        build_dataset("digits", "test")


def test_eval_transform_follows_official_protocol():
    transform = eval_transform(224, crop_pct=0.875)
    assert transform.transforms[0].size == 256 and transform.transforms[1].size == (224, 224)
    out = transform(Image.new("RGB", (300, 400)))
    assert out.shape == (3, 224, 224)


def test_train_augmentation_produces_normalised_crops(folder):
    ds = build_dataset(folder, "val", img_size=32, train_aug=True)
    names = [type(t).__name__ for t in ds.transform.transforms]
    assert [type(t).__name__ for t in ds.transform.transforms[0].transforms] == ["Resize", "RandomCrop"]
    assert "RandAugment" in names and names[-1] == "RandomErasing"
    assert ds[0][0].shape == (3, 32, 32)
    big = build_dataset(folder, "val", img_size=48, train_aug=True)
    assert type(big.transform.transforms[0]).__name__ == "RandomResizedCropAndInterpolation"


def test_synthetic_dataset_is_deterministic_and_split_disjoint():
    from rmeeto.data import build_dataset

    train, val = build_dataset("synthetic", "train", 8), build_dataset("synthetic", "val", 8)
    x, y = train[3]
    assert x.shape == (3, 8, 8) and y == 3
    assert torch.equal(train[3][0], x)  # same index, same image
    assert not torch.equal(val[3][0], x)  # val draws other images
    assert len(train.classes) == 1000


# ---------------------------------------------------------------------------------------------- subsets
def test_subset_indices_balanced_is_deterministic_per_class_and_in_bounds():
    from rmeeto.data import subset_indices

    labels = [0] * 100 + [1] * 40 + [2] * 3 + [3] * 1  # imbalanced, with a class of one sample
    a = subset_indices(labels, 0.1, seed=5)
    assert a == subset_indices(labels, 0.1, seed=5) and a == sorted(set(a))
    assert a != subset_indices(labels, 0.1, seed=6)
    counts = {c: sum(labels[i] == c for i in a) for c in range(4)}
    assert counts == {0: 10, 1: 4, 2: 1, 3: 1}  # same fraction per class, at least one each
    assert all(0 <= i < len(labels) for i in a)
    # a class's sample does not depend on the other classes being present
    only0 = subset_indices([0] * 100, 0.1, seed=5)
    assert only0 == [i for i in a if labels[i] == 0]
    assert subset_indices(labels, 1.0, seed=5) == list(range(len(labels)))


def test_subset_indices_uniform_and_bad_input():
    from rmeeto.data import subset_indices

    labels = [i % 7 for i in range(500)]
    u = subset_indices(labels, 0.2, seed=1, mode="uniform")
    assert len(u) == 100 and u == subset_indices(labels, 0.2, seed=1, mode="uniform") and len(set(u)) == 100
    assert u != subset_indices(labels, 0.2, seed=2, mode="uniform")
    for bad in (0, 1.5, -0.1, True):
        with pytest.raises(ValueError, match="fraction"):
            subset_indices(labels, bad)
    with pytest.raises(ValueError, match="mode='stratified' is not valid"):
        subset_indices(labels, 0.5, mode="stratified")
    with pytest.raises(ValueError, match="empty"):
        subset_indices([], 0.5)


def test_subset_dataset_touches_only_the_training_split():
    from rmeeto.data import build_dataset, dataset_labels, subset_dataset

    train = build_dataset("digits", "train", img_size=8, mean=(0.5,) * 3, std=(0.5,) * 3)
    val = build_dataset("digits", "val", img_size=8, mean=(0.5,) * 3, std=(0.5,) * 3)
    val_before = list(val.targets)
    sub = subset_dataset(train, 0.05, seed=0)
    assert len(val) == len(val_before) and list(val.targets) == val_before  # validation untouched
    assert sub.classes == train.classes and sorted(set(sub.targets)) == sorted(set(train.targets))
    assert sub.targets == dataset_labels(sub)
    x, y = sub[0]
    assert y == train[sub.indices[0]][1] and torch.equal(x, train[sub.indices[0]][0])
    assert subset_dataset(train, 1.0) is train
    assert not set(sub.indices) - set(range(len(train)))


def test_hidden_folders_and_files_are_neither_classes_nor_images(tmp_path):
    """Jupyter's .ipynb_checkpoints beside the class folders, macOS's ._x.jpg resource forks beside the images."""
    from rmeeto.data import ImageFolderDataset

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / cls / "0.jpg")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / ".ipynb_checkpoints" / "0.jpg")
    (tmp_path / "a" / "._0.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (tmp_path / "a" / ".cache").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / ".cache" / "1.jpg")
    ds = ImageFolderDataset(tmp_path)
    assert ds.classes == ["a", "b"]
    assert [Path(p).relative_to(tmp_path).as_posix() for p, _ in ds.samples] == ["a/0.jpg", "b/0.jpg"]

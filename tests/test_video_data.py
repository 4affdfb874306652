"""Clip data: list files, sparse frame sampling (checked by hand), PyAV decoding, clip-consistent augmentation,
12-view aggregation, and skipping of unreadable or too-short videos."""

import random

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

pytest.importorskip("av")

from rmeeto.data import Batch, DataError, SkipLog, SkippedSample  # noqa: E402
from rmeeto.video import (  # noqa: E402
    VIDEO_BACKENDS,
    ClipEvalTransform,
    ClipTrainTransform,
    VideoClipDataset,
    VideoReadError,
    collate_clips,
    encode_video,
    evaluate_views,
    moving_square_frames,
    open_video,
    predict_views,
    read_clip_list,
    read_frames,
    sample_frame_indices,
    write_synthetic_clips,
)

MEAN = STD = (0.5, 0.5, 0.5)


# --------------------------------------------------------------------------------------------- sampling


@pytest.mark.parametrize(
    "length, mode, clip, expected",
    [
        # N=21: seg = 20/8 = 2.5, starts round(2.5 i) with half to even = 0 2 5 8 10 12 15 18 (20)
        (21, "val", 0, [1, 3, 6, 9, 11, 13, 16, 19]),  # + int(2.5 / 2) = 1
        (21, "test", 0, [0, 2, 5, 8, 10, 12, 15, 18]),  # + int(2.5 / 5 * 1) = 0
        (21, "test", 1, [1, 3, 6, 9, 11, 13, 16, 19]),  # + int(2.5 / 5 * 2) = 1
        (21, "test", 3, [2, 4, 7, 10, 12, 14, 17, 20]),  # + int(2.5 / 5 * 4) = 2
        # N=300: seg = 37.375, starts 0 37 75 112 150 187 224 262 (149.5 -> 150, half to even)
        (300, "val", 0, [18, 55, 93, 130, 168, 205, 242, 280]),  # + int(18.6875) = 18
        (300, "test", 0, [7, 44, 82, 119, 157, 194, 231, 269]),  # + int(7.475) = 7
        (300, "test", 3, [29, 66, 104, 141, 179, 216, 253, 291]),  # + int(29.9) = 29
        # shorter than num_frames: N=5, seg = 0.5, starts round(0.5 i) = 0 0 1 2 2 2 3 4 -> frames repeat
        (5, "val", 0, [0, 0, 1, 2, 2, 2, 3, 4]),
        (5, "test", 3, [0, 0, 1, 2, 2, 2, 3, 4]),
        (1, "val", 0, [0] * 8),
        (1, "test", 2, [0] * 8),
    ],
)
def test_frame_indices_by_hand(length, mode, clip, expected):
    assert sample_frame_indices(length, 8, mode, clip, num_clips=4) == expected


@pytest.mark.parametrize(
    "length, spans",
    [
        # N=21: segment i draws from [round(2.5 i), round(2.5 (i + 1))], both ends included
        (21, [(0, 2), (2, 5), (5, 8), (8, 10), (10, 12), (12, 15), (15, 18), (18, 20)]),
        # N=9: seg = 1 -> [i, i + 1]
        (9, [(i, i + 1) for i in range(8)]),
        # N=5: seg = 0.5, starts 0 0 1 2 2 2 3 4 4
        (5, [(0, 0), (0, 1), (1, 2), (2, 2), (2, 2), (2, 3), (3, 4), (4, 4)]),
    ],
)
def test_train_indices_cover_each_segment_inclusively(length, spans):
    draws = np.array([sample_frame_indices(length, 8, "train", rng=np.random.default_rng(s)) for s in range(300)])
    for i, (lo, hi) in enumerate(spans):
        assert set(draws[:, i].tolist()) == set(range(lo, hi + 1)), f"segment {i}"


def test_train_indices_reproducible_from_the_generator():
    a = sample_frame_indices(300, 8, "train", rng=np.random.default_rng(7))
    b = sample_frame_indices(300, 8, "train", rng=np.random.default_rng(7))
    c = sample_frame_indices(300, 8, "train", rng=np.random.default_rng(8))
    assert a == b and a != c
    assert a == sorted(a)


def test_sampling_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rng"):
        sample_frame_indices(30, 8, "train")
    with pytest.raises(ValueError, match="mode"):
        sample_frame_indices(30, 8, "validation")
    with pytest.raises(ValueError, match="clip_index"):
        sample_frame_indices(30, 8, "test", clip_index=4, num_clips=4)
    with pytest.raises(ValueError, match="video_length"):
        sample_frame_indices(0, 8, "val")


# --------------------------------------------------------------------------------------------- list files


def test_list_file_parsing(tmp_path):
    lst = tmp_path / "train.csv"
    lst.write_text("# header comment\n\nclips/a b.mp4,3\n/abs/c.mp4 , 0\n")
    assert read_clip_list(lst, tmp_path, sep=",") == [(str(tmp_path / "clips/a b.mp4"), 3), ("/abs/c.mp4", 0)]
    lst.write_text("a.mp4 1\nb.mp4   2\n")
    assert read_clip_list(lst) == [("a.mp4", 1), ("b.mp4", 2)]


@pytest.mark.parametrize("bad", ["b.mp4 cat", "b.mp4", "b.mp4 -1", " 4", "b.mp4 1.5"])
def test_list_file_errors_name_file_and_line(tmp_path, bad):
    lst = tmp_path / "list.txt"
    lst.write_text(f"a.mp4 0\n\n{bad}\n")
    with pytest.raises(DataError, match=r"list\.txt:3: expected 'path label'") as info:
        read_clip_list(lst)
    assert "\n" not in str(info.value)


def test_list_file_missing_or_empty(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_clip_list(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(DataError, match="lists no videos"):
        read_clip_list(tmp_path / "empty.txt")


# --------------------------------------------------------------------------------------------- decoding


def _square_box(frame: np.ndarray, thresh: int = 128) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the bright pixels of a uint8 [H, W, 3] frame (inclusive)."""
    ys, xs = np.nonzero(frame.mean(-1) > thresh)
    return ys.min(), xs.min(), ys.max(), xs.max()


def test_pyav_decoding_matches_drawn_frames(tmp_path):
    drawn = moving_square_frames("down", num_frames=12, size=32, square=8, start=(2, 10), step=2)
    encode_video(tmp_path / "v.mp4", drawn)
    reader = open_video(tmp_path / "v.mp4")
    assert len(reader) == 12
    frames = reader.get_frames([0, 5, 5, 11])
    reader.close()
    assert frames.shape == (4, 32, 32, 3) and frames.dtype == np.uint8
    for got, t in zip(frames, [0, 5, 5, 11]):
        top, left, bottom, right = _square_box(got)
        assert abs(top - (2 + 2 * t)) <= 1 and abs(left - 10) <= 1, t
        assert abs(bottom - (9 + 2 * t)) <= 1 and abs(right - 17) <= 1, t
        assert np.abs(got.astype(int) - drawn[t].astype(int)).mean() < 6


def test_val_clip_shows_the_sampled_frames(tmp_path):
    """End to end: the val clip of a 16-frame video holds frames 0 2 4 6 8 9 11 13 (seg 1.875, offset 0)."""
    encode_video(tmp_path / "v.mp4", moving_square_frames("right", 16, 32, 8, start=(12, 0)))
    (tmp_path / "list.txt").write_text("v.mp4 0\n")
    ds = VideoClipDataset(tmp_path / "list.txt", tmp_path, "val", crop_size=32, mean=MEAN, std=STD)
    clip, label = ds[0]
    assert clip.shape == (3, 8, 32, 32) and label == 0
    pixels = ((clip * 0.5 + 0.5) * 255).permute(1, 2, 3, 0).numpy()  # [T, H, W, 3]
    lefts = [_square_box(f)[1] for f in pixels]
    assert lefts == pytest.approx([0, 2, 4, 6, 8, 9, 11, 13], abs=1)


def test_overstated_length_is_resampled(monkeypatch, tmp_path):
    """A container that says 20 frames but holds 10: indices are drawn again for 10 frames."""

    class Truncated:
        def __init__(self, path):
            self._length = 20

        def __len__(self):
            return self._length

        def get_frames(self, indices):
            if max(indices) >= 10:
                self._length = 10
                raise VideoReadError("stream ended")
            return np.stack([np.full((2, 2, 3), i, np.uint8) for i in indices])

        def close(self):
            pass

    monkeypatch.setitem(VIDEO_BACKENDS, "fake", Truncated)
    (tmp_path / "v.mp4").write_bytes(b"")
    frames, indices = read_frames(tmp_path / "v.mp4", lambda n: sample_frame_indices(n, 8, "val"), "fake")
    # N=10: seg = 1.125, starts 0 1 2 3 4 6 7 8 (4.5 -> 4, half to even), offset int(0.5625) = 0
    assert indices == [0, 1, 2, 3, 4, 6, 7, 8]
    assert frames[:, 0, 0, 0].tolist() == indices
    with pytest.raises(VideoReadError, match="too short"):
        read_frames(tmp_path / "v.mp4", lambda n: sample_frame_indices(n, 8, "val"), "fake", min_frames=11)


def test_decord_backend_needs_decord(tmp_path):
    try:
        import decord  # noqa: F401
        pytest.skip("decord is installed")
    except ImportError:
        pass
    (tmp_path / "list.txt").write_text("v.mp4 0\n")
    with pytest.raises(ImportError, match="pip install decord"):
        VideoClipDataset(tmp_path / "list.txt", tmp_path, backend="decord")
    with pytest.raises(ValueError, match="pyav, decord"):
        VideoClipDataset(tmp_path / "list.txt", tmp_path, backend="opencv")


# --------------------------------------------------------------------------------------------- augmentation


def _still_clip(num_frames=6, h=40, w=48, seed=0) -> np.ndarray:
    """Identical textured frames (a gradient plus noise, so crops, flips and colour ops all show)."""
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, w)[None, :, None] * np.linspace(0.3, 1, h)[:, None, None]
    frame = np.clip(base + rng.integers(0, 60, (h, w, 3)), 0, 255).astype(np.uint8)
    return np.repeat(frame[None], num_frames, axis=0)


@pytest.mark.parametrize("seed", range(6))
def test_train_augmentation_is_the_same_on_every_frame(seed):
    frames = _still_clip()
    py_state, np_state = random.getstate(), np.random.get_state()
    plain = ClipTrainTransform(24, erase_prob=0.0)(frames, np.random.default_rng(seed))
    assert random.getstate() == py_state and np.all(np.random.get_state()[1] == np_state[1])  # left untouched
    assert plain.shape == (3, 6, 24, 24)
    for t in range(1, 6):
        assert torch.equal(plain[:, t], plain[:, 0]), f"frame {t} augmented differently"
    # the same draws with erasing on: one box, the same on every frame, filled with fresh noise per frame
    erased = ClipTrainTransform(24, erase_prob=1.0)(frames, np.random.default_rng(seed))
    changed = (erased != plain).any(0)  # [T, H, W]
    assert changed.any()
    for t in range(6):
        assert torch.equal(changed[t], changed[0])
    ys, xs = torch.nonzero(changed[0], as_tuple=True)
    box = torch.zeros_like(changed[0])
    box[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
    assert torch.equal(changed[0], box)  # a rectangle
    assert not torch.equal(erased[:, 0], erased[:, 1])  # noise drawn per frame


def test_train_augmentation_draws_differ_between_clips():
    frames = _still_clip()
    outs = [ClipTrainTransform(24)(frames, np.random.default_rng(s)) for s in range(4)]
    assert all(not torch.equal(outs[0], o) for o in outs[1:])
    again = ClipTrainTransform(24)(frames, np.random.default_rng(2))
    assert torch.equal(again, outs[2])


def test_test_crops_run_along_the_long_side():
    # pixel value = column index, so a view's first column tells where it was cut; 32 x 48 -> starts 0, 8, 16
    frame = np.broadcast_to(np.arange(48, dtype=np.uint8)[None, :, None], (32, 48, 3))
    frames = np.repeat(frame[None], 2, axis=0)
    views = ClipEvalTransform(32, 32, num_crops=3, mean=(0, 0, 0), std=(1, 1, 1))(frames)
    assert views.shape == (3, 3, 2, 32, 32)
    assert [round(float(v[0, 0, 0, 0]) * 255) for v in views] == [0, 8, 16]
    portrait = np.ascontiguousarray(frames.transpose(0, 2, 1, 3))  # 48 x 32: crops top / centre / bottom
    views = ClipEvalTransform(32, 32, num_crops=3, mean=(0, 0, 0), std=(1, 1, 1))(portrait)
    assert [round(float(v[0, 0, 0, 0]) * 255) for v in views] == [0, 8, 16]
    center = ClipEvalTransform(32, 32, num_crops=1, mean=(0, 0, 0), std=(1, 1, 1))(frames)
    assert round(float(center[0, 0, 0, 0, 0]) * 255) == 8


# --------------------------------------------------------------------------------------------- datasets


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    return folder, write_synthetic_clips(folder, num_videos=4, num_frames=16, size=32)


def test_dataset_items_per_mode(clips):
    folder, lst = clips
    train = VideoClipDataset(lst, folder, "train", crop_size=32, num_sample=2, seed=0)
    pair = train[1]
    assert isinstance(pair, list) and len(pair) == 2
    assert [p[1] for p in pair] == [1, 1] and not torch.equal(pair[0][0], pair[1][0])  # two augmentations
    assert all(torch.equal(a[0], b[0]) for a, b in zip(pair, train[1]))  # a pure function of (seed, epoch, index)
    train.set_epoch(1)
    assert not torch.equal(pair[0][0], train[1][0][0])
    batch = collate_clips([train[0], train[1]])
    assert isinstance(batch, Batch) and batch.images.shape == (4, 3, 8, 32, 32)
    assert batch.labels.tolist() == [0, 0, 1, 1]
    test = VideoClipDataset(lst, folder, "test", crop_size=24, short_side_size=32)
    views, label = test[2]
    assert views.shape == (12, 3, 8, 24, 24) and label == 2 and test.num_views == 12
    val_clip = VideoClipDataset(lst, folder, "val", crop_size=24, short_side_size=32)[2][0]
    # 16 frames: seg = 1.875; val offset int(0.9375) = 0 and test offsets int(0.375 (k + 1)) = 0 0 1 1, so the
    # val clip is test view 1 (clip 0, centre crop), clip 1 repeats clip 0 and clip 3 is one frame later
    assert torch.equal(val_clip, views[1])
    assert torch.equal(views[1], views[4]) and not torch.equal(views[1], views[10])
    assert not torch.equal(views[9], views[10])  # left vs centre crop


def test_unreadable_and_short_videos_are_skipped_and_counted(clips, tmp_path):
    folder, lst = clips
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
    good = (folder / "video_0000.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(good[: len(good) // 3])
    encode_video(tmp_path / "short.mp4", moving_square_frames(0, 3, 32))
    lines = [f"{folder / 'video_0000.mp4'} 0", "noise.mp4 1", "missing.mp4 2", "cut.mp4 3", "short.mp4 0",
             f"{folder / 'video_0001.mp4'} 1"]
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    for mode in ("train", "val", "test"):
        ds = VideoClipDataset(tmp_path / "list.txt", tmp_path, mode, crop_size=32)
        log, labels = SkipLog(), []
        # batches of 3 each hold a readable video: an all-unreadable batch collates to None (the image
        # pipeline's convention), which carries no skip record
        for batch in DataLoader(ds, batch_size=3, collate_fn=collate_clips):
            log.update(batch)
            if batch is not None:
                labels += batch.labels.tolist()
        assert labels == [0, 1], mode
        assert log.count == 4 and set(log.paths) == {str(tmp_path / n) for n in
                                                       ("noise.mp4", "missing.mp4", "cut.mp4", "short.mp4")}
        assert "too short: 3 frames" in log.paths[str(tmp_path / "short.mp4")]
    # min_frames=1 keeps the 3-frame video, as the official loader, repeating its frames
    item = VideoClipDataset(tmp_path / "list.txt", tmp_path, "val", crop_size=32, min_frames=1)[4]
    assert not isinstance(item, SkippedSample) and item[0].shape == (3, 8, 32, 32)


# --------------------------------------------------------------------------------------------- multi-view test


class ViewModel(nn.Module):
    """Logits log(table[v]) for an input whose pixels all equal v (the view's number)."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, x):  # [N, 3, T, H, W]
        v = x.flatten(1)[:, 0].round().long()
        return self.table[v].log()


def _views(which: list[list[int]]) -> torch.Tensor:
    """[batch, V, 3, 2, 4, 4] clips whose pixels equal the view ids in ``which``."""
    return torch.tensor(which, dtype=torch.float32)[:, :, None, None, None, None].expand(-1, -1, 3, 2, 4, 4)


def test_twelve_views_are_softmax_averaged():
    # views 0-5 are confident in class 0, views 6-11 rule class 0 out and lean to class 1. The mean of the
    # softmaxes (the official rule) picks class 0 (0.45 vs 0.26); mean logits would pick class 1.
    table = torch.tensor([[0.9, 0.02, 0.02, 0.02, 0.02, 0.02]] * 6 + [[1e-6, 0.5, 0.125, 0.125, 0.125, 0.125]] * 6)
    table /= table.sum(-1, keepdim=True)
    model = ViewModel(table)
    views = _views([list(range(12)), [1] * 12])
    probs = predict_views(model, views)
    assert torch.allclose(probs[0], table.mean(0), atol=1e-6)
    assert torch.allclose(probs[1], table[1], atol=1e-6)
    assert probs[0].argmax() == 0 and table.log().mean(0).argmax() == 1
    assert torch.allclose(predict_views(model, views, view_chunk=1), probs)
    assert torch.allclose(predict_views(model, _views([[3]])[:, 0]), table[3][None], atol=1e-6)  # one clip


def test_evaluate_views_top1_top5_and_skips():
    table = torch.softmax(torch.arange(7.0), -1).expand(12, 7)  # every view: class 6 > 5 > ... > 0
    model = ViewModel(table)
    batches = [
        Batch(_views([[0] * 12, [0] * 12]), torch.tensor([6, 5]), [SkippedSample("a.mp4", "bad")]),
        None,
        Batch(_views([[0] * 12]), torch.tensor([0]), [SkippedSample("a.mp4", "bad"), SkippedSample("b.mp4", "x")]),
    ]
    stats = evaluate_views(model, batches)
    # label 6 is top-1; label 5 is top-2 (in the top 5); label 0 is last of 7 classes (in neither)
    assert stats["n"] == 3 and stats["skipped"] == 2
    assert stats["top1"] == pytest.approx(100 / 3) and stats["top5"] == pytest.approx(200 / 3)

"""Checkpoint loading/saving: official layout, prefixes, EMA, safetensors, refusal of pickled code, clear errors,
pos_embed / head adaptation, atomic saves."""

from __future__ import annotations

import argparse
import os
import pickle
import random
import re
from pathlib import Path

import pytest
import torch

from rmeeto import CheckpointError, create_model, inspect_checkpoint, load_checkpoint, save_checkpoint
from rmeeto.checkpoint import read_checkpoint
from rmeeto.models.vim import checkpoint_filter_fn, resample_pos_embed

NAME = "vim_test_patch4_16"  # 16x16 input, patch 4: 16 patches + cls = 17 tokens, cls at index 8


def make_model(seed: int, **overrides):
    torch.manual_seed(seed)
    return create_model(NAME, **overrides).eval()


@pytest.fixture(scope="module")
def source():
    return make_model(0)


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def source_logits(source, images):
    with torch.no_grad():
        return source(images)


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def official_checkpoint(model, prefix: str = "", ema=None) -> dict:
    """What the official Vim trainer writes (args is an argparse.Namespace)."""
    sd = {prefix + k: v.clone() for k, v in model.state_dict().items()}
    return {
        "model": sd,
        "model_ema": (ema or model).state_dict(),
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]},
        "epoch": 3,
        "args": argparse.Namespace(model="vim_tiny_patch16_224_bimambav2", lr=5e-4, distill="False"),
    }


class MarkerWriter:
    """Unpickling this creates a file: stands in for any code a malicious checkpoint could run."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "module._orig_mod."])
def test_official_layout_loads_strict_with_identical_logits(tmp_path, source, images, source_logits, prefix):
    path = tmp_path / "ckpt.pth"
    torch.save(official_checkpoint(source, prefix), path)
    target = make_model(1)
    assert not same_weights(target, source)
    result = load_checkpoint(target, path)
    with torch.no_grad():
        assert torch.equal(target(images), source_logits)
    assert result.source == "model" and result.epoch == 3 and result.num_tensors == len(source.state_dict())
    assert not (result.missing_keys or result.unexpected_keys or result.head_reset)


def test_use_ema_takes_model_ema(tmp_path, source):
    ema = make_model(2)
    path = tmp_path / "ckpt.pth"
    torch.save(official_checkpoint(source, ema=ema), path)
    target = make_model(1)
    assert load_checkpoint(target, path, use_ema=True).source == "model_ema"
    assert same_weights(target, ema)

    torch.save({"model": source.state_dict()}, tmp_path / "no_ema.pth")
    with pytest.raises(CheckpointError, match="no 'model_ema'"):
        load_checkpoint(target, tmp_path / "no_ema.pth", use_ema=True)


def test_save_checkpoint_roundtrip_keeps_extras(tmp_path, source):
    path = save_checkpoint(source, tmp_path / "sub" / "ckpt.pth", epoch=7,
                           args=argparse.Namespace(model=NAME), model_ema=source.state_dict())
    raw = read_checkpoint(path)
    assert set(raw) == {"model", "epoch", "args", "model_ema"}
    assert raw["epoch"] == 7 and raw["args"].model == NAME
    target = make_model(1)
    load_checkpoint(target, path)
    assert same_weights(target, source)
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pth"]  # no temp file left behind


def test_safetensors_roundtrip(tmp_path, source, images, source_logits):
    ema = make_model(2)
    path = save_checkpoint(source, tmp_path / "w.safetensors", epoch=2, model_ema=ema.state_dict())
    raw = read_checkpoint(path)
    assert raw["epoch"] == 2 and set(raw["model"]) == set(source.state_dict())
    target = make_model(1)
    load_checkpoint(target, path)
    with torch.no_grad():
        assert torch.equal(target(images), source_logits)
    load_checkpoint(target, path, use_ema=True)
    assert same_weights(target, ema)
    with pytest.raises(TypeError, match="optimizer"):
        save_checkpoint(source, tmp_path / "w2.safetensors", optimizer={"state": {1: object()}})


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickled_code_is_refused_and_never_runs(tmp_path, source, writer):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    payload = {"model": source.state_dict(), "args": argparse.Namespace(lr=1.0), "x": MarkerWriter(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    for call in (lambda: load_checkpoint(make_model(1), path), lambda: inspect_checkpoint(path)):
        with pytest.raises(CheckpointError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message and str(path) in message
        assert "refusing" in message and "non-tensor" in message
        assert not marker.exists()
    # the payload is live: an unsafe load would have run it
    if writer == "torch.save":
        torch.load(path, weights_only=False)
    else:
        with open(path, "rb") as f:
            pickle.load(f)
    assert marker.exists()


def test_missing_and_unexpected_keys_are_listed(tmp_path, source):
    sd = dict(source.state_dict())
    del sd["norm_f.weight"]
    sd["extra.weight"] = torch.zeros(3)
    torch.save({"model": sd}, tmp_path / "ckpt.pth")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(make_model(1), tmp_path / "ckpt.pth")
    message = str(info.value)
    assert "1 missing key (norm_f.weight)" in message and "1 unexpected key (extra.weight)" in message

    model = make_model(1)
    result = load_checkpoint(model, tmp_path / "ckpt.pth", strict=False)
    assert result.missing_keys == ["norm_f.weight"] and result.unexpected_keys == ["extra.weight"]
    # every key the model has and the file holds is loaded, the unexpected one left aside
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in sd.items() if k != "extra.weight")


def test_many_missing_keys_are_counted_and_truncated(tmp_path, source):
    torch.save({"model": source.state_dict()}, tmp_path / "ckpt.pth")
    deeper = make_model(1, depth=6)  # layers 4 and 5 absent from the file: 2 x 17 keys
    with pytest.raises(CheckpointError, match=r"34 missing keys \(layers\.4\.mixer\.A_log, .*\(24 more\)\)") as info:
        load_checkpoint(deeper, tmp_path / "ckpt.pth")
    assert f"looks like {NAME}" in str(info.value)


def test_shape_mismatch_names_key_and_shapes(tmp_path, source):
    sd = dict(source.state_dict())
    sd["layers.1.mixer.x_proj.weight"] = torch.zeros(5, 64)
    torch.save({"model": sd}, tmp_path / "ckpt.pth")
    with pytest.raises(CheckpointError, match=r"layers\.1\.mixer\.x_proj\.weight has shape \(5, 64\), the model "
                                              r"expects \(34, 64\)"):
        load_checkpoint(make_model(1), tmp_path / "ckpt.pth")


def test_pos_embed_is_interpolated_and_cls_row_kept(tmp_path, source):
    torch.save({"model": source.state_dict()}, tmp_path / "ckpt.pth")
    target = make_model(1, img_size=24)  # 6x6 patches + cls = 37 tokens, cls at 18
    with pytest.warns(UserWarning, match="pos_embed interpolated from 17 to 37"):
        result = load_checkpoint(target, tmp_path / "ckpt.pth")
    assert result.pos_embed_resized == (17, 37)
    old, new = source.pos_embed.detach(), target.pos_embed.detach()
    assert new.shape == (1, 37, 32)
    assert torch.equal(new[:, 18], old[:, 8])
    # corner patches stay close to the corners of the old grid, and the model runs at the new size
    assert torch.allclose(new[:, 0], old[:, 0], atol=0.05)
    assert target(torch.randn(1, 3, 24, 24)).shape == (1, 10)


def test_resample_pos_embed_to_same_grid_is_identity(source):
    pos = source.pos_embed.detach()
    assert torch.allclose(resample_pos_embed(pos, (4, 4)), pos, atol=1e-6)
    # grid order is row-major: a pos_embed that varies along the rows only still does after resizing
    rows = torch.arange(4.0).repeat_interleave(4)  # patch k is in row k // 4
    pos = torch.cat([rows[:8], torch.tensor([-1.0]), rows[8:]]).view(1, 17, 1)
    out = resample_pos_embed(pos, (8, 8))[0, :, 0]
    grid = torch.cat([out[:32], out[33:]]).view(8, 8)
    assert out[32] == -1.0 and torch.allclose(grid, grid[:, :1].expand(8, 8)) and (grid[1:, 0] >= grid[:-1, 0]).all()


def test_head_with_other_class_count_is_reinitialised(tmp_path, source):
    torch.save({"model": source.state_dict()}, tmp_path / "ckpt.pth")
    target = make_model(1, num_classes=5)
    with pytest.warns(UserWarning, match="checkpoint has 10 classes, model has 5; head re-initialised"):
        result = load_checkpoint(target, tmp_path / "ckpt.pth")
    assert result.head_reset
    assert target.head.weight.shape == (5, 32) and target.head.bias.abs().sum() == 0
    assert torch.equal(target.norm_f.weight, source.norm_f.weight)


def test_checkpoint_filter_fn_is_pure(source):
    sd = {"module." + k: v for k, v in source.state_dict().items()}
    before = dict(sd)
    out = checkpoint_filter_fn({"model": sd, "epoch": 1}, make_model(1))
    assert sd == before and set(out) == set(source.state_dict())


def test_unreadable_files_give_one_line_errors(tmp_path, source):
    good = tmp_path / "good.pth"
    torch.save({"model": source.state_dict()}, good)
    data = good.read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.pth").write_bytes(random.Random(0).randbytes(4096))  # seeded: the same bytes each run
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    cases = {
        "truncated.pth": "corrupt, truncated", "garbage.pth": "corrupt, truncated", "empty.pth": "empty",
        "bad.safetensors": "not a valid safetensors", "missing.pth": "does not exist", ".": "is a directory",
    }
    for name, expected in cases.items():
        path = tmp_path / name
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(make_model(1), path)
        assert "\n" not in str(info.value) and str(path) in str(info.value) and expected in str(info.value)


def test_any_random_bytes_give_a_one_line_error(tmp_path):
    # random bytes sometimes parse as a pickle far enough to name a non-tensor global: refused, not run; any
    # other garbage is "corrupt". Never a traceback from inside the unpickler, never a load.
    seen = set()
    for seed in range(120):
        path = tmp_path / f"garbage{seed}.pth"
        path.write_bytes(random.Random(seed).randbytes(4096))
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(make_model(1), path)
        message = str(info.value)
        assert "\n" not in message and str(path) in message
        kind = "corrupt" if "corrupt, truncated" in message else "refused" if "refusing to load" in message else message
        seen.add(kind)
    assert seen <= {"corrupt", "refused"}, seen


@pytest.mark.parametrize("fail_in", ["torch.save", "os.replace"])
def test_save_is_atomic(tmp_path, source, monkeypatch, fail_in):
    path = save_checkpoint(source, tmp_path / "ckpt.pth", epoch=1)
    original = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    def broken_replace(src, dst):
        raise OSError("rename failed")

    if fail_in == "torch.save":
        monkeypatch.setattr(torch, "save", broken_save)
    else:
        monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        save_checkpoint(make_model(1), path, epoch=2)
    monkeypatch.undo()
    assert path.read_bytes() == original and read_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]


def test_save_refuses_what_weights_only_cannot_load(tmp_path, source):
    class Config:
        pass

    with pytest.raises(TypeError, match=r"checkpoint\['config'\]"):
        save_checkpoint(source, tmp_path / "ckpt.pth", config=Config())
    assert not (tmp_path / "ckpt.pth").exists()


def test_inspect_checkpoint_describes_official_layout(tmp_path, source):
    path = tmp_path / "ckpt.pth"
    torch.save(official_checkpoint(source, "module."), path)
    info = inspect_checkpoint(path)
    assert info["top_level_keys"] == ["model", "model_ema", "optimizer", "epoch", "args"]
    assert info["weights_key"] == "model" and info["prefix"] == "module."
    assert info["num_tensors"] == 75 and info["num_params"] == 57_418 and info["dtype"] == "float32"
    assert info["arch"] == {"embed_dim": 32, "depth": 4, "patch_size": 4, "in_chans": 3, "img_size": 16,
                            "num_classes": 10, "num_tokens": 17, "d_state": 16}
    assert info["model"] == NAME and info["model_overrides"] == {}
    assert info["has_ema"] and info["epoch"] == 3 and info["trained_as"] == "vim_tiny_patch16_224_bimambav2"


def test_inspect_recognises_vim_tiny_with_other_head(tmp_path):
    shapes = create_model("vim_tiny_patch16_224", num_classes=100, device="meta").state_dict()
    torch.save({"model": {k: torch.zeros(v.shape) for k, v in shapes.items()}}, tmp_path / "ti.pth")
    info = inspect_checkpoint(tmp_path / "ti.pth")
    assert info["model"] == "vim_tiny_patch16_224" and info["model_overrides"] == {"num_classes": 100}
    assert info["num_tensors"] == 415 and not info["has_ema"] and info["epoch"] is None


def test_inspect_names_a_tensor_its_structure_did_not_reveal(tmp_path):
    """The shapes `info` reads (width, depth, patch, head, d_state) can name a model that the file still does not
    load into: one mis-shaped or missing tensor elsewhere. inspect_checkpoint checks every tensor against the
    model built on the meta device, and `rmeeto info` says the file does not load instead of how to load it."""
    from rmeeto.cli.info import format_info

    good = create_model("vim_test_patch4_16").state_dict()
    torch.save({"model": good}, tmp_path / "good.pth")
    info = inspect_checkpoint(tmp_path / "good.pth")
    assert info["model"] == "vim_test_patch4_16" and info["misfit"] is None
    assert "load with" in format_info(info) and "does not load" not in format_info(info)
    key = "layers.2.mixer.out_proj.weight"
    reshaped = {**good, key: torch.zeros(good[key].shape[0], good[key].shape[1] + 2)}
    missing = {k: v for k, v in good.items() if k != "layers.1.mixer.D"}
    for name, weights, want in [("reshaped", reshaped, f"{key} has shape"),
                                ("missing", missing, "1 missing key (layers.1.mixer.D)")]:
        torch.save({"model": weights}, tmp_path / f"{name}.pth")
        info = inspect_checkpoint(tmp_path / f"{name}.pth")
        assert info["model"] == "vim_test_patch4_16" and want in info["misfit"], info["misfit"]
        text = format_info(info)
        assert "does not load" in text and want in text and "load with" not in text
        with pytest.raises(CheckpointError, match=re.escape(want)):  # what a load then says
            load_checkpoint(create_model("vim_test_patch4_16"), tmp_path / f"{name}.pth")


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.complex64])
def test_weights_that_are_not_floating_point_are_refused(tmp_path, dtype):
    """copy_ casts them silently: int weights truncated to zeros scored 50 % on two classes as if a model."""
    model = create_model("vim_test_patch4_16")
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    for path in (tmp_path / "w.pth", tmp_path / "w.safetensors"):
        if path.suffix == ".safetensors" and dtype == torch.complex64:
            continue  # safetensors stores no complex tensors
        save_checkpoint(state, path)
        with pytest.raises(CheckpointError, match=f"is {str(dtype).replace('torch.', '')}, not a floating-point"):
            load_checkpoint(create_model("vim_test_patch4_16"), path)

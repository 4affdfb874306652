"""Weights from the Hugging Face hub, offline: the real ``hf_hub_download`` reads a hub cache these tests build
(blobs, snapshot symlinks, refs, as huggingface_hub writes them), or is replaced at its boundary to simulate
HTTP failures. Covers ``pretrained=True`` (rmeeto and timm), R-MeeTo tags (merge config applied),
``hf-hub:`` paths everywhere a checkpoint path goes, and the one-line errors."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest
import torch

import rmeeto
from rmeeto import hub
from rmeeto.checkpoint import CheckpointError, load_checkpoint
from rmeeto.models import inspect_checkpoint
from rmeeto.cli import main
from rmeeto.merge import MergeConfig, apply_merge, trace_tokens
from rmeeto.models import get_config

NAME = "vim_test_patch4_16"  # 17 tokens; its paper preset merges 2 tokens at every second layer
REPO = "rmeeto-test/tiny-vim"
COMMIT = "0123456789abcdef0123456789abcdef01234567"

TEST_ROWS = (
    hub.Pretrained(NAME, "plain_test", REPO, "plain.pth"),
    hub.Pretrained(NAME, "rmeeto_r2_test", REPO, "R-MeeTo_tiny/model_best.pth", merge=dict(num_merged=2)),
)


class HubCache:
    """A huggingface_hub cache folder written the way ``hf_hub_download`` writes it."""

    def __init__(self, root: Path):
        self.root = root

    def put(self, repo: str, filename: str, obj, commit: str = COMMIT, ref: str = "main") -> None:
        buf = io.BytesIO()
        torch.save(obj, buf)
        data = buf.getvalue()
        folder = self.root / f"models--{repo.replace('/', '--')}"
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = folder / "snapshots" / commit / filename
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
        (folder / "refs").mkdir(exist_ok=True)
        (folder / "refs" / ref).write_text(commit)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "PRETRAINED", TEST_ROWS + hub.PRETRAINED)
    return HubCache(tmp_path / "hub")


def trained(seed: int):
    torch.manual_seed(seed)
    return rmeeto.create_model(NAME).eval()


def weights_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


IMAGES = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------------------------- table


def test_table_rows_are_consistent():
    names = [p.name for p in hub.PRETRAINED]
    assert len(names) == len(set(names))
    for row in hub.PRETRAINED:
        repo, filename, revision = hub.parse_hub_path(row.hub_path)
        assert (repo, filename, revision) == (row.repo, row.filename, row.revision)
        if row.merge is not None:
            assert not row.merge_config().is_noop
    # official Vim rows are the files SPEC section 2 names, in the repos it names
    for size, letter in (("tiny", "t"), ("small", "s"), ("base", "b")):
        row = hub.get_pretrained(f"vim_{size}_patch16_224")  # a bare name is the default row
        assert row.tag == "in1k" and row.repo == f"hustvl/Vim-{size}-midclstok"
        assert row.filename == get_config(row.model).checkpoint and row.filename.startswith(f"vim_{letter}_midclstok")
    assert hub.get_pretrained("vim_base_patch16_224").use_ema  # the Vim-B file's accuracy is its EMA weights


@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_rmeeto_vim_rows_carry_the_paper_merge(size):
    model = f"vim_{size}_patch16_224"
    row = [p for p in hub.PRETRAINED if p.model == model and p.tag.startswith("rmeeto_")]
    assert len(row) == 1 and row[0].repo == "Soptq/R-Meeto"
    assert row[0].merge_config() == MergeConfig.paper(model)


def test_list_and_unknown_tag():
    assert "vim_small_patch16_224.rmeeto_r11_in1k" in hub.list_pretrained("vim_small*")
    with pytest.raises(hub.HubError, match=r"vim_small_patch16_224 has: .*rmeeto_r11_in1k"):
        rmeeto.create_model("vim_small_patch16_224.rmeeto_r3_in1k")
    with pytest.raises(hub.HubError, match="no published weights"):
        hub.get_pretrained(f"{NAME}.anything")


@pytest.mark.parametrize("bad", ["hf-hub:owner/repo", "hf-hub:owner//x.pth", "hf-hub:a/b/c.pth@", "hf-hub:/a/b"])
def test_malformed_hub_paths(bad):
    with pytest.raises(hub.HubError, match="hf-hub:"):
        hub.resolve(bad)


# ----------------------------------------------------------------------------------------------- pretrained


def test_pretrained_plain_model_from_the_cache(cache):
    source = trained(1)
    cache.put(REPO, "plain.pth", {"model": source.state_dict(), "epoch": 3})
    for name in (NAME, f"{NAME}.plain_test"):  # the bare name is the first (default) row
        model = rmeeto.create_model(name, pretrained=True).eval()
        assert weights_equal(model, source)
        assert getattr(model, "merge_config", None) is None
        assert trace_tokens(model, IMAGES)[-1]["tokens"] == 17


def test_rmeeto_tag_loads_and_merges(cache):
    source = trained(2)
    cache.put(REPO, "R-MeeTo_tiny/model_best.pth", {"model": source.state_dict()})
    model = rmeeto.create_model(f"{NAME}.rmeeto_r2_test", pretrained=True).eval()
    assert weights_equal(model, source)
    assert model.merge_config == MergeConfig.paper(NAME)
    reference = apply_merge(trained(2), MergeConfig.paper(NAME)).eval()
    assert trace_tokens(model, IMAGES) == trace_tokens(reference, IMAGES)
    assert trace_tokens(model, IMAGES)[-1]["tokens"] < 17
    with torch.no_grad():
        torch.testing.assert_close(model(IMAGES), reference(IMAGES), rtol=0, atol=0)


def test_timm_pretrained_tag(cache):
    timm = pytest.importorskip("timm")
    source = trained(3)
    cache.put(REPO, "R-MeeTo_tiny/model_best.pth", {"model": source.state_dict()})
    model = timm.create_model(f"{NAME}.rmeeto_r2_test", pretrained=True)
    assert weights_equal(model, source) and model.merge_config == MergeConfig.paper(NAME)
    assert not hasattr(timm.create_model(NAME), "merge_config")  # no tag, no pretrained: plain and unmerged


def test_override_of_an_unchecked_file_name(cache, monkeypatch, tmp_path):
    source, other = trained(4), trained(5)
    cache.put(REPO, "R-MeeTo_tiny/model_best.pth", {"model": source.state_dict()})
    cache.put(REPO, "R-MeeTo_tiny/checkpoint.pth", {"model": other.state_dict()})
    monkeypatch.setenv("RMEETO_WEIGHTS_VIM_TEST_PATCH4_16__RMEETO_R2_TEST", f"hf-hub:{REPO}/R-MeeTo_tiny/checkpoint.pth")
    model = rmeeto.create_model(f"{NAME}.rmeeto_r2_test", pretrained=True)
    assert weights_equal(model, other) and model.merge_config == MergeConfig.paper(NAME)
    # a local file given as checkpoint_path also replaces the table's file, the tag's merge still applies
    rmeeto.save_checkpoint(source, tmp_path / "mine.pth")
    model = rmeeto.create_model(f"{NAME}.rmeeto_r2_test", pretrained=True, checkpoint_path=str(tmp_path / "mine.pth"))
    assert weights_equal(model, source) and model.merge_config == MergeConfig.paper(NAME)


def test_offline_and_not_cached_is_one_line(cache):
    with pytest.raises(CheckpointError) as info:
        rmeeto.create_model(f"{NAME}.rmeeto_r2_test", pretrained=True)
    message = str(info.value)
    assert isinstance(info.value, hub.HubError) and "\n" not in message
    assert f"{REPO}/R-MeeTo_tiny/model_best.pth" in message and "offline" in message and "not cached" in message


def test_strict_loading_still_applies(cache):
    wrong = rmeeto.create_model(NAME, depth=2)
    cache.put(REPO, "plain.pth", {"model": wrong.state_dict()})
    with pytest.raises(CheckpointError, match="missing key"):
        rmeeto.create_model(NAME, pretrained=True)


# ----------------------------------------------------------------------------------------------- hf-hub: paths


def test_hub_path_with_revision_everywhere(cache, capsys):
    source = trained(6)
    cache.put(REPO, "runs/a/best.pth", {"model": source.state_dict(), "epoch": 7})
    for spec in (f"hf-hub:{REPO}/runs/a/best.pth", f"hf-hub:{REPO}/runs/a/best.pth@{COMMIT}"):
        local = hub.resolve(spec)
        assert local.is_file() and local.parent.name == "a" and COMMIT in str(local)
        model = rmeeto.create_model(NAME)
        assert load_checkpoint(model, spec).epoch == 7 and weights_equal(model, source)
        assert weights_equal(rmeeto.create_model(NAME, checkpoint_path=spec), source)
        assert inspect_checkpoint(spec)["model"] == NAME
    assert main(["info", f"hf-hub:{REPO}/runs/a/best.pth"]) == 0
    assert NAME in capsys.readouterr().out

    from rmeeto.cli.eval import check_paths

    check_paths(f"hf-hub:{REPO}/runs/a/best.pth", "digits")  # no error: the cached file exists


def test_cli_hub_errors_are_one_line(cache, capsys):
    assert main(["info", f"hf-hub:{REPO}/nothing.pth"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "nothing.pth" in err and "offline" in err

    from rmeeto.cli import CLIError
    from rmeeto.cli.eval import check_paths

    with pytest.raises(CLIError, match="not cached"):
        check_paths(f"hf-hub:{REPO}/nothing.pth")


def test_online_http_failures_become_one_line(monkeypatch, tmp_path):
    """hf_hub_download replaced at its boundary: what it is asked, and how its errors are worded."""
    import types

    import huggingface_hub
    from huggingface_hub import errors

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    calls = []
    # what the HTTP errors read from a response (the HTTP client library differs between huggingface_hub versions)
    response = types.SimpleNamespace(status_code=404, headers={}, request=None)

    def fake(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs))
        if filename == "gone.pth":
            raise errors.RemoteEntryNotFoundError("404 Client Error.\nEntry Not Found for url", response=response)
        if repo_id == "someone/private":
            raise errors.RepositoryNotFoundError("401 Client Error.\nRepository Not Found", response=response)
        (tmp_path / "ok.pth").write_bytes(b"x")
        return str(tmp_path / "ok.pth")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    assert hub.resolve("hf-hub:someone/repo/dir/ok.pth@v1.0") == tmp_path / "ok.pth"
    assert calls[-1] == ("someone/repo", "dir/ok.pth",
                         dict(revision="v1.0", cache_dir=str(tmp_path), local_files_only=False))
    with pytest.raises(hub.HubError) as info:
        hub.resolve("hf-hub:someone/repo/gone.pth")
    assert str(info.value) == "cannot get hf-hub:someone/repo/gone.pth: HTTP 404: no such file in the repository"
    with pytest.raises(hub.HubError, match="no such repository") as info:
        hub.resolve("hf-hub:someone/private/w.pth")
    assert "\n" not in str(info.value)

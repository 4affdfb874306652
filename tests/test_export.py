"""Export round trips: a tiny merged Vim written as an ExportedProgram (.pt2) and as ONNX, loaded back and run,
equals the eager model in float32 (fixed and dynamic batch); bad input gets one-line errors."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import rmeeto
from rmeeto.cli import main
from rmeeto.export import ExportError, export_model, run_exported, verify_export
from rmeeto.merge import MergeConfig, apply_merge

NAME = "vim_test_patch4_16"  # 17 tokens, depth 4: merges 2 tokens at layer 2
MERGE = MergeConfig(num_merged=2)
ATOL = 1e-5

needs_onnx = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxscript", "onnxruntime")),
    reason="needs onnx, onnxscript and onnxruntime (pip install 'rmeeto[export]' onnxruntime)",
)


@pytest.fixture(scope="module")
def plain():
    torch.manual_seed(0)
    return rmeeto.create_model(NAME).eval()


@pytest.fixture(scope="module")
def merged(plain):
    import copy

    return apply_merge(copy.deepcopy(plain), MERGE).eval()


def images(n: int) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(n))


def eager(model, x):
    with torch.no_grad():
        return model(x)


@pytest.mark.slow
def test_exported_program_dynamic_batch_round_trip(merged, plain, tmp_path):
    merged.set_scan_backend("chunked")  # export must not depend on (or change) the caller's backend
    path = export_model(merged, tmp_path / "m.pt2", "exported-program", batch_size=2, dynamic_batch=True)
    assert merged.layers[0].mixer.scan_backend == "chunked"
    program = torch.export.load(str(path)).module()
    for n in (1, 3, 5):
        x = images(n)
        with torch.no_grad():
            got = program(x)
        torch.testing.assert_close(got, eager(merged, x), rtol=0, atol=ATOL)
        # the merge is part of the graph: the unmerged model gives other logits
        assert (got - eager(plain, x)).abs().max() > 1e-3
    assert verify_export(merged, path, batch_sizes=(1, 4)) <= ATOL


@pytest.mark.slow
@pytest.mark.full  # 46 s of the default tier (a second torch.export); the error-path CLI tests stay; CI runs it
def test_cli_export_fixed_batch(merged, tmp_path, capsys):
    ckpt = rmeeto.save_checkpoint(merged, tmp_path / "w.pth")
    out = tmp_path / "fixed.pt2"
    code = main(["export", NAME, "--checkpoint", str(ckpt), "-r", "2", "--format", "exported-program",
                 "--out", str(out), "--batch-size", "2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "merged (flags: num_merged=2)" in captured.err and "verified" in captured.err
    torch.testing.assert_close(run_exported(out, images(2)), eager(merged, images(2)), rtol=0, atol=ATOL)
    with pytest.raises(Exception):  # a fixed-batch program refuses another batch size
        run_exported(out, images(3))


@pytest.mark.slow
@needs_onnx
def test_onnx_dynamic_batch_under_onnxruntime(merged, tmp_path):
    path = export_model(merged, tmp_path / "m.onnx", "onnx", batch_size=2, dynamic_batch=True)
    import onnx

    onnx.checker.check_model(str(path))
    for n in (1, 3):
        torch.testing.assert_close(run_exported(path, images(n)), eager(merged, images(n)), rtol=0, atol=ATOL)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(format="tflite", out="m.pt2"), "unknown export format 'tflite'"),
        (dict(format="onnx", out="m.pt2"), "onnx files end in .onnx"),
        (dict(format="exported-program", out="m.pt2", batch_size=0), "batch size must be an int >= 1"),
    ],
)
def test_bad_export_input_is_one_line(merged, tmp_path, kwargs, message):
    kwargs["out"] = tmp_path / kwargs["out"]
    with pytest.raises(ExportError, match=message) as info:
        export_model(merged, **kwargs)
    assert "\n" not in str(info.value) and not kwargs["out"].exists()
    with pytest.raises(ExportError, match="expected an rmeeto VisionMamba"):
        export_model(torch.nn.Linear(2, 2), tmp_path / "x.pt2")


def test_nan_weights_are_refused_and_a_failed_export_keeps_the_old_file(merged, tmp_path, monkeypatch):
    import copy

    import rmeeto.export as rexport
    from rmeeto.export import verify_export

    old = tmp_path / "m.pt2"
    old.write_bytes(b"an earlier artefact")
    broken = copy.deepcopy(merged)
    with torch.no_grad():
        broken.head.weight.fill_(float("nan"))
    with pytest.raises(ExportError, match="outputs are not finite .* nothing written"):
        export_model(broken, old)
    assert old.read_bytes() == b"an earlier artefact"

    def half_written(model, x, dynamic_batch, out):
        out.write_bytes(b"half")
        raise RuntimeError("exporter crashed")

    monkeypatch.setitem(rexport._EXPORTERS, "exported-program", half_written)
    with pytest.raises(ExportError, match="exported-program export failed: RuntimeError: exporter crashed"):
        export_model(merged, old)
    assert old.read_bytes() == b"an earlier artefact" and sorted(p.name for p in tmp_path.iterdir()) == ["m.pt2"]

    # an artefact that answers NaN does not "verify" (NaN compares false against any tolerance)
    monkeypatch.setattr(rexport, "run_exported", lambda path, images: torch.full((len(images), 10), float("nan")))
    with pytest.raises(ExportError, match="batch 1 gave logits that are not finite"):
        verify_export(merged, old)


def test_cli_export_errors(tmp_path, capsys):
    assert main(["export", NAME, "--checkpoint", str(tmp_path / "none.pth"), "--out", str(tmp_path / "m.pt2")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not exist" in err
    assert main(["export", "vim_huge", "--checkpoint", "x.pth", "--out", str(tmp_path / "m.pt2")]) == 2
    assert "unknown model 'vim_huge'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: --format choices
        main(["export", NAME, "--checkpoint", "x.pth", "--out", "m.onnx", "--format", "tflite"])

"""`rmeeto bench` and the inference fast path on CPU (the CUDA paths are exercised in tests/test_gpu_model.py)."""

import json

import pytest
import torch

import rmeeto
from rmeeto.cli import main
from rmeeto.fast import accelerate


def test_bench_cli_rows_and_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "vim_test_patch4_16", "--device", "cpu", "--batch-size", "2", "--warmup", "1",
               "--repeats", "2", "--dtype", "fp32", "-r", "3", "--compare", "--train", "--train-repeats", "1",
               "--json", str(out)])
    assert rc == 0
    results = json.loads(out.read_text())["results"]
    # inference and train, each: 2 backends x (unmerged, merged)
    assert [(r["section"], r["backend"], r["merge"] is None) for r in results] == [
        (s, b, m) for s in ("inference", "train") for b in ("reference", "chunked") for m in (True, False)
    ]
    for r in results:
        assert r["images_per_s"] > 0 and r["ms_p10"] <= r["ms_median"] <= r["ms_p90"]
        if r["merge"] is not None:
            assert r["merge"]["num_merged"] == 3
        else:
            assert r["speedup_vs_unmerged"] == 1.0
    assert "images/s" in capsys.readouterr().out


def test_bench_cli_rejects_cuda_without_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["bench", "vim_test_patch4_16", "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_accelerate_eager_matches_model_and_rejects_graphs_on_cpu():
    model = rmeeto.create_model("vim_test_patch4_16").eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
    assert torch.equal(accelerate(model, "auto")(x), ref)
    with pytest.raises(ValueError, match="CUDA"):
        accelerate(model, "cudagraph")
    with pytest.raises(ValueError, match="choose from"):
        accelerate(model, "turbo")

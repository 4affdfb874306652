"""Whole-model checks on CUDA: fast path (auto backend, CUDA graphs) vs the pure-PyTorch reference path.

Skipped without CUDA; run on the device with: PYTHONPATH=src python3 -m pytest -q tests/test_gpu_*.py
"""

import pytest
import torch

import rmeeto
from rmeeto.fast import accelerate

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _model(name, merged, **kw):
    torch.manual_seed(0)
    m = rmeeto.create_model(name, **kw).cuda().eval()
    if merged:
        rmeeto.apply_merge(m, rmeeto.MergeConfig.paper(name))
    return m


@pytest.mark.parametrize("merged", [False, True])
def test_vim_small_fast_path_matches_reference_fp32(merged):
    model = _model("vim_small_patch16_224", merged)
    x = torch.randn(4, 3, 224, 224, device="cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    with torch.no_grad():
        model.set_scan_backend("chunked")
        ref = model(x)
        model.set_scan_backend("auto")
        out = model(x)
    assert rel(out, ref) < 1e-3
    assert (out.argmax(-1) == ref.argmax(-1)).all()


def test_vim_small_bf16_autocast_close_to_fp32():
    model = _model("vim_small_patch16_224", True)
    x = torch.randn(4, 3, 224, 224, device="cuda")
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x)
    assert torch.isfinite(out).all()
    assert rel(out.float(), ref) < 5e-2


@pytest.mark.parametrize("merged", [False, True])
def test_cuda_graph_replay_equals_eager(merged):
    model = _model("vim_tiny_patch16_224", merged).half()
    fast = accelerate(model, "cudagraph")
    for _ in range(2):  # fresh inputs each time: the graph must not bake in data-dependent choices
        x = torch.randn(8, 3, 224, 224, device="cuda", dtype=torch.half)
        with torch.no_grad():
            eager = model(x)
        out = fast(x).clone()
        assert rel(out.float(), eager.float()) < 1e-3


def test_merged_training_step_gradients_match_reference():
    model = _model("vim_tiny_patch16_224", True, depth=6)
    model.train()
    x = torch.randn(2, 3, 224, 224, device="cuda")
    grads = {}
    for backend in ("chunked", "auto"):
        model.zero_grad()
        model.set_scan_backend(backend)
        torch.manual_seed(1)
        model(x).float().pow(2).mean().backward()
        grads[backend] = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    for name, g in grads["chunked"].items():
        assert rel(grads["auto"][name], g) < 1e-2, name

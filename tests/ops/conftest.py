"""Fixtures shared by the op tests. Nothing here imports Triton or needs CUDA when the file is loaded: the GPU
test files must still be collected, and skip, on a machine without either."""

import pytest
import torch

from rmeeto import MergeConfig, apply_merge, create_model


@pytest.fixture
def tiny_vim():
    """A factory: ``tiny_vim(merged, device="cpu")`` -> ``vim_test_patch4_16`` (17 tokens, depth 4) with the
    weights of seed 0 on ``device``, merging two tokens per layer when ``merged``."""

    def build(merged: bool, device="cpu"):
        torch.manual_seed(0)
        model = create_model("vim_test_patch4_16").to(device)
        if merged:
            apply_merge(model, MergeConfig(num_merged=2))
        return model

    return build


@pytest.fixture
def poison_scan_buffers():
    """Every buffer the Triton scan allocates is filled with NaN first (``triton_scan._POISON``) while the test
    runs, so an element a kernel forgets to write fails the comparison."""
    from rmeeto.ops.triton import scan as triton_scan  # imported here: only tests that run (have Triton) use it

    old = triton_scan._POISON
    triton_scan._POISON = True
    yield
    triton_scan._POISON = old


def _within_rounding(got: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> bool:
    exact = a.double() @ b.double().T
    bound = a.shape[-1] * 2.0 ** -24 * (a.double().abs() @ b.double().abs().T)
    fi = torch.finfo(got.dtype)
    spacing = (got.double().abs() * fi.eps).clamp_min(fi.tiny * fi.eps)
    return bool(((got.double() - exact).abs() <= 0.5 * spacing + bound).all())


@pytest.fixture
def within_rounding():
    """``within_rounding(got, a, b)``: whether ``got`` (16-bit) is ``a @ b.T`` computed in float32 in any summation
    order and rounded once: within half a spacing of got's dtype plus the float32 summation bound
    k * 2^-24 * (|a| @ |b|.T) of the exact (float64) product. A wrong row, column, weight or mask is off by far
    more. (The GEMM kernels' GPU tests: projections, sum + out_proj, in_proj.)"""
    return _within_rounding


@pytest.fixture
def switch_ab():
    """A factory for the GPU tests of one fused inference kernel with a switch (``rmeeto.ops.policy.set_fused``):
    ``switch_ab(op, module, name, merged, model_name="vim_small_patch16_224")`` builds that model (the paper merge
    when ``merged``) with the weights of seed 0 and takes float logits of 16 random images: ``ref`` (the float32 model), then of the fp16 model ``on`` /
    ``off`` (the general path, the prepared blocks off, with the switch on / off), ``planned`` (prepared blocks,
    switch on) and ``graphed`` (CUDA graph, switch on); and ``calls_on`` / ``calls_off``: how often ``module.name``
    (the kernel's launcher, spied on) ran in the ``on`` and the ``off`` forward. It asserts what every such kernel
    must show: one launch per block with the switch on and none off; the fp16 logits as close to the float32
    model's with the kernel as without it (within 10% more error) and the same top-1 for 90% of the images; the
    general path, the prepared blocks and the graph equal bit for bit. Returns the dict."""
    from rmeeto.fast import accelerate
    from rmeeto.ops import policy

    def run(op: str, module, name: str, merged: bool, model_name: str = "vim_small_patch16_224") -> dict:
        torch.manual_seed(0)
        model = create_model(model_name).cuda().eval()
        if merged:
            apply_merge(model, MergeConfig.paper(model_name))
        x = torch.randn(16, 3, 224, 224, device="cuda")
        out = {}
        with torch.no_grad():
            out["ref"] = model(x).float()
        half, xh = model.half(), x.half()

        def logits(on: bool, plan: bool, graphed: bool = False):
            policy.set_fused(op, on)
            policy.set_fused("plan", plan)
            try:
                with torch.no_grad():
                    return (accelerate(half, "cudagraph") if graphed else half)(xh).float()
            finally:
                policy.set_fused(op, True)
                policy.set_fused("plan", True)

        calls = []
        real = getattr(module, name)

        def spy(*args, **kw):
            calls.append(1)
            return real(*args, **kw)

        setattr(module, name, spy)
        try:
            out["on"] = logits(True, False)
            out["calls_on"] = len(calls)
            out["off"] = logits(False, False)
            out["calls_off"] = len(calls) - out["calls_on"]
        finally:
            setattr(module, name, real)
        out["planned"] = logits(True, True)
        out["graphed"] = logits(True, True, graphed=True)
        assert (out["calls_on"], out["calls_off"]) == (24, 0)
        ref = out["ref"]
        err_on, err_off = (out["on"] - ref).norm() / ref.norm(), (out["off"] - ref).norm() / ref.norm()
        assert err_on <= 1.1 * err_off + 1e-4, (err_on.item(), err_off.item())
        assert torch.equal(out["on"], out["planned"]) and torch.equal(out["on"], out["graphed"])
        assert (out["on"].argmax(-1) == out["off"].argmax(-1)).float().mean() >= 0.9
        return out

    return run


@pytest.fixture
def training_step_ab():
    """A factory for the GPU tests that a fused inference kernel stays out of training: ``training_step_ab(op)``
    runs one bf16-autocast training step of Vim-Ti (weights of seed 0, 8 random images) with the switch ``op``
    (``rmeeto.ops.policy.set_fused``) on, then off, asserts that the loss and every parameter's gradient are equal
    bit for bit, and returns the two lists [loss, every parameter's gradient]."""
    from rmeeto.ops import policy

    def run(op: str, device="cuda") -> tuple[list, list]:
        torch.manual_seed(0)
        model = create_model("vim_tiny_patch16_224").to(device).train()
        x = torch.randn(8, 3, 224, 224, device=device)
        grads = []
        for on in (True, False):
            policy.set_fused(op, on)
            try:
                model.zero_grad(set_to_none=True)
                torch.manual_seed(1)
                with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
                    loss = model(x).float().logsumexp(-1).mean()
                loss.backward()
                grads.append([loss.detach()] + [p.grad.clone() for p in model.parameters() if p.grad is not None])
            finally:
                policy.set_fused(op, True)
        on, off = grads
        assert len(on) == len(off) and all(torch.equal(a, b) for a, b in zip(on, off))
        return on, off

    return run

"""in_proj as persistent tiles over TMA descriptors on Hopper (rmeeto.ops.triton.inproj): within one rounding of a
float32 GEMM at Vim-Ti's shapes, and in whole models (unmerged and merged Vim-Ti and S) as close to the float32 model as
cuBLAS is, eager equal to graphed, launched through the cached launcher, the training step untouched. Its logic is
also tested on CPU under Triton's interpreter (tests/ops/test_interpreted.py)."""

import pytest
import torch

from rmeeto.ops import inproj
from rmeeto.ops.triton import inproj as ti

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() < (9, 0),
                       reason="needs TMA (compute capability 9.0 or more)"),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernel_within_one_rounding_of_a_float32_gemm(dtype, within_rounding):
    K, N = 192, 768  # Vim-Ti
    torch.manual_seed(0)
    w = (torch.randn(N, K, device="cuda") / K ** 0.5).to(dtype)
    for L in (197, 147, 76, 5):
        x = torch.randn(128 if L > 5 else 3, L, K, device="cuda").to(dtype)
        got = ti.in_proj(x, w)
        assert within_rounding(got.reshape(-1, N), x.reshape(-1, K), w), (L, dtype)
        assert torch.equal(inproj.in_proj(x, w), got)  # the dispatch takes the kernel
    assert not ti.fits(384, 1536, 128 * 197) and not ti.fits(768, 3072, 128 * 76)  # where cuBLAS was ahead


@pytest.mark.parametrize("merged", [False, True])
@pytest.mark.parametrize("model_name", ["vim_tiny_patch16_224", "vim_small_patch16_224"])
def test_model_logits_as_close_to_float32_as_cublas(model_name, merged, switch_ab):
    """Vim-Ti and Vim-S (16 images: few enough rows for Vim-S's width) fp16 logits with the kernel are as close to
    the float32 model's as with cuBLAS (within 10% more error), eager (general path and prepared blocks) equal to
    graphed bit for bit, and the general path launches the kernel once per block (a spy)."""
    switch_ab("inproj", ti, "in_proj", merged, model_name=model_name)  # the fixture asserts


def test_plans_launch_it_through_the_cached_launcher():
    """A prepared mixer takes the kernel through rmeeto.ops.triton._launch.Launcher, whose first call caches the
    compiled launcher (host-made descriptors are in the fast path's key), and gives the general path's bits."""
    from rmeeto import create_model
    from rmeeto.ops import policy

    torch.manual_seed(0)
    mixer = create_model("vim_tiny_patch16_224").cuda().half().layers[0].mixer
    h = torch.randn(4, 197, 192, device="cuda", dtype=torch.half)
    with torch.no_grad():
        prepared = mixer.plan(h)
        assert prepared is not None
        plan, tensors = prepared
        first = plan(h, tensors)
        assert plan.inp, "the plan did not take the in_proj kernel"
        again = plan(h.clone(), tensors)
        assert plan.inp.launcher.entry is not None or not policy.fast_launch()
        policy.set_fused("plan", False)
        try:
            general = mixer(h)[0]
        finally:
            policy.set_fused("plan", True)
    assert torch.equal(first, general) and torch.equal(again, general)


def test_training_step_does_not_take_the_kernel(training_step_ab):
    """With gradients flowing (and under autocast) the mixer keeps cuBLAS: a bf16 training step's loss and
    gradients are equal bit for bit with the switch on and off."""
    training_step_ab("inproj")  # the fixture asserts

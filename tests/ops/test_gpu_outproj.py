"""The two scan directions' sum and out_proj in one kernel on CUDA (rmeeto.ops.triton.outproj; at Vim-B's width the
TMA tiles of rmeeto.ops.triton.tma_gemm): within one rounding of a float32 GEMM of the rounded sum at the Vim shapes
it serves, and in whole models (unmerged and merged Vim-S and Vim-B) as close to the float32 model as the add +
cuBLAS are, eager equal to graphed, the training step untouched.
Its logic is also tested on CPU under Triton's interpreter (tests/ops/test_interpreted.py)."""

import pytest
import torch

from rmeeto.ops import outproj
from rmeeto.ops.triton import outproj as to

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("dims", [(384, 192), (768, 384), (1536, 768)], ids=["ti", "s", "b"])
def test_kernel_within_one_rounding_of_a_float32_gemm(dtype, dims, within_rounding):
    """Vim-Ti / S widths: the plain tiles; Vim-B's: the TMA tiles (Hopper), which the dispatch takes up to
    TMA_MAX_ROWS rows (the add + cuBLAS past them)."""
    K, N = dims
    tma = not to.fits(K, N)
    if tma and torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("the TMA tiles need compute capability 9.0 or more")
    torch.manual_seed(0)
    w = (torch.randn(N, K, device="cuda") / K ** 0.5).to(dtype)
    for L in (197, 175, 98, 76, 5):
        y = torch.randn(2, 128 if L > 5 else 3, L, K, device="cuda").to(dtype)
        got = to.sum_out_proj(y, w)
        s = (y[0] + y[1]).reshape(-1, K)
        assert within_rounding(got.reshape(-1, N), s, w), (L, dtype)
        # the dispatch on the scan's [2, batch, dim, L] layout: the kernel, and the reference where it does not apply
        y2 = y.transpose(2, 3)
        taken = not tma or y.shape[1] * L <= to.TMA_MAX_ROWS
        assert torch.equal(outproj.sum_out_proj(y2, w), got if taken else outproj.sum_out_proj_torch(y2, w)), L
    assert not to.fits(1536, 768) and to.tma_fits(1536, 768, 128 * 175) and not to.tma_fits(1536, 768, 128 * 197)


def test_tma_tiles_left_over_in_row_halves_give_the_same_bits():
    """Vim-B's sum + out_proj where the TMA tiles' last round is at most half full (153 and 98 tokens at batch 128 on a
    132-SM H200): the rule's split (halves there, by tma_gemm.tail_split) gives the bits of whole tiles."""
    from rmeeto.ops.triton import tma_gemm

    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("the TMA tiles need compute capability 9.0 or more")
    torch.manual_seed(0)
    K, N = 1536, 768
    w = (torch.randn(N, K, device="cuda") / K ** 0.5).half()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for L in (153, 98):
        y = torch.randn(2, 128, L, K, device="cuda").half()
        split = tma_gemm.spec(128 * L, N, K, y.device, to.TMA_CONFIG, two_a=True)[2]["SPLIT"]
        assert sms != 132 or split == 2, (L, split)
        whole = to.sum_out_proj(y, w, dict(to.TMA_CONFIG, TAIL_SPLIT=1))
        assert torch.equal(to.sum_out_proj(y, w), whole), L
        assert torch.equal(to.sum_out_proj(y, w, dict(to.TMA_CONFIG, TAIL_SPLIT=2)), whole), L


@pytest.mark.parametrize("merged", [False, True])
def test_model_logits_as_close_to_float32_as_the_add_and_gemm(merged, switch_ab):
    """Vim-S fp16 logits with the kernel are as close to the float32 model's as with the add + cuBLAS (within 10%
    more error), eager (general path and prepared blocks) equal to graphed bit for bit, and the general path
    launches the kernel once per block (a spy)."""
    switch_ab("outproj", to, "sum_out_proj", merged)  # the fixture asserts


@pytest.mark.parametrize("merged", [False, True])
def test_vim_b_takes_the_tma_tiles(merged, switch_ab):
    """Vim-B (16 images: few enough rows for the TMA tiles at every layer) as the test above: as close to the
    float32 model as the add + cuBLAS, eager equal to graphed, one launch per block."""
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("the TMA tiles need compute capability 9.0 or more")
    switch_ab("outproj", to, "sum_out_proj", merged, model_name="vim_base_patch16_224")  # the fixture asserts


def test_training_step_does_not_take_the_kernel(training_step_ab):
    """With gradients flowing (and under autocast) the mixer keeps the add + cuBLAS: a bf16 training step's loss
    and gradients are equal bit for bit with the switch on and off."""
    training_step_ab("outproj")  # the fixture asserts


def test_dispatch_falls_back_where_the_kernel_does_not_apply():
    """float32 activations, a bias and a weight that needs a gradient take the add + GEMM (bit for bit the
    reference)."""
    torch.manual_seed(0)
    y2 = torch.randn(2, 2, 33, 96, device="cuda").transpose(2, 3)
    w = torch.randn(40, 96, device="cuda")
    assert torch.equal(outproj.sum_out_proj(y2, w), outproj.sum_out_proj_torch(y2, w))
    h2, wh = y2.half(), w.half()
    b = torch.randn(40, device="cuda").half()
    assert torch.equal(outproj.sum_out_proj(h2, wh, b), outproj.sum_out_proj_torch(h2, wh, b))
    wg = wh.clone().requires_grad_()
    assert not outproj.fused_applies(h2, wg)
    with torch.no_grad():
        assert outproj.fused_applies(h2, wg)

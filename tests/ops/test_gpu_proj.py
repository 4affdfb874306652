"""Both scan directions' x_proj and dt_proj in one kernel on CUDA (rmeeto.ops.triton.proj): within one rounding
of float32 GEMMs at the Vim shapes, and in whole models (unmerged and merged Vim) as close to the float32
model as the four cuBLAS GEMMs are, eager equal to graphed, training untouched. Its logic is also tested on
CPU under Triton's interpreter (tests/ops/test_interpreted.py)."""

import pytest
import torch

from rmeeto.ops import proj
from rmeeto.ops.triton import proj as tp

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _logical(xd, R, N):
    """The kernel's x_dbl as the GEMM's [..., R + 2N] (dt, B, C), after checking its row layout: B and C 16-byte
    aligned after zero padding (tp.xdbl_row)."""
    bo, width = tp.xdbl_row(R, 2 * N)
    assert xd.shape[-1] == width and (bo * xd.element_size()) % 16 == 0 and (width * xd.element_size()) % 16 == 0
    assert bool((xd[..., R:bo] == 0).all())
    return torch.cat(tp.xdbl_parts(xd, R, N), -1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("dims", [(384, 12), (768, 24), (1536, 48)], ids=["ti", "s", "b"])
def test_kernel_within_one_rounding_of_float32_gemms(dtype, dims, within_rounding):
    D, R = dims
    N = 16
    torch.manual_seed(0)
    # 128 x 142 rows: on Hopper at Vim-S width the large tiles with fewer rows per program (whole waves)
    if dims[0] == 768 and tp.hopper_sms(torch.device("cuda")) is not None:
        assert tp.proj_config(128 * 142, 768, tp.hopper_sms(torch.device("cuda"))).get("ROWS", 128) < 128
    for M in (128 * 197, 128 * 142, 128 * 98, 3 * 197):
        uf, ub = (torch.randn(M, D, device="cuda").to(dtype).view(1, M, D) for _ in range(2))
        w = [torch.randn(R + 2 * N, D, device="cuda") / D ** 0.5, torch.randn(R + 2 * N, D, device="cuda") / D ** 0.5,
             torch.randn(D, R, device="cuda") / R ** 0.5, torch.randn(D, R, device="cuda") / R ** 0.5]
        xd, de = tp.bidir_scan_inputs(uf, ub, *w, N)
        xl = _logical(xd, R, N)
        for d, u, wx, wdt in ((0, uf, w[0], w[2]), (1, ub, w[1], w[3])):
            # of the same rounded inputs; delta from the kernel's own rounded dt part
            assert within_rounding(xl[d, 0], u[0], wx.to(dtype)), ("x_proj", M, d)
            assert within_rounding(de[d, 0], xd[d, 0, :, :R], wdt.to(dtype)), ("dt_proj", M, d)


@pytest.mark.parametrize("dims", [(768, 24), (1536, 48)], ids=["s", "b"])
def test_tiles_with_fewer_rows_per_program_and_a_register_cap(dims, within_rounding):
    """Tiles that take fewer rows per program than they hold (ROWS, a constexpr: the rest masked) and a register
    cap (maxnreg) are within one rounding too, over row counts that leave the last program part-full."""
    D, R = dims
    N = 16
    torch.manual_seed(1)
    cfgs = [dict(tp.PROJ_CONFIG_WAVE, ROWS=96), dict(tp.PROJ_CONFIG_LARGE, ROWS=72),
            dict(tp.PROJ_CONFIG_WAVE, ROWS=104, maxnreg=168)]
    for M in (128 * 142, 128 * 175 - 3):
        uf, ub = (torch.randn(M, D, device="cuda").half().view(1, M, D) for _ in range(2))
        w = [torch.randn(R + 2 * N, D, device="cuda") / D ** 0.5, torch.randn(R + 2 * N, D, device="cuda") / D ** 0.5,
             torch.randn(D, R, device="cuda") / R ** 0.5, torch.randn(D, R, device="cuda") / R ** 0.5]
        for cfg in cfgs:
            xd, de = tp.bidir_scan_inputs(uf, ub, *w, N, cfg)
            xl = _logical(xd, R, N)
            for d, u, wx, wdt in ((0, uf, w[0], w[2]), (1, ub, w[1], w[3])):
                assert within_rounding(xl[d, 0], u[0], wx.half()), ("x_proj", M, cfg, d)
                assert within_rounding(de[d, 0], xd[d, 0, :, :R], wdt.half()), ("dt_proj", M, cfg, d)


@pytest.mark.parametrize("merged", [False, True])
def test_model_logits_as_close_to_float32_as_the_gemms(merged, switch_ab):
    """Vim-S fp16 logits with the kernel are as close to the float32 model's as with the four GEMMs (within
    10% more error), eager (general path and prepared blocks) equal to graphed bit for bit; the general path
    launches the kernel once per block (a spy; tests/ops/test_gpu_plan.py shows the prepared mixers give its
    bits)."""
    switch_ab("proj", tp, "bidir_scan_inputs", merged)  # the fixture asserts


def test_training_step_does_not_take_the_kernel(training_step_ab):
    """With gradients flowing, the mixer keeps the four GEMMs: a bf16 training step's loss and gradients are
    equal bit for bit with the switch on and off (a frozen teacher in no_grad would take it)."""
    training_step_ab("proj")  # the fixture asserts


def test_dispatch_falls_back_where_the_kernel_does_not_apply():
    """float32 activations and tensors that need a gradient take the GEMMs (bit for bit the reference)."""
    torch.manual_seed(0)
    D, R, N = 96, 6, 16
    u = torch.randn(2, 33, D, device="cuda")
    w = [torch.randn(R + 2 * N, D, device="cuda"), torch.randn(R + 2 * N, D, device="cuda"),
         torch.randn(D, R, device="cuda"), torch.randn(D, R, device="cuda")]
    got = proj.bidir_scan_inputs(u, u, *w, N)
    ref = proj.bidir_scan_inputs_torch(u, u, *w, N)
    assert all(torch.equal(a, b) for pair_a, pair_b in zip(got, ref) for a, b in zip(pair_a, pair_b))
    wg = [t.clone().requires_grad_() for t in w]
    assert not proj.fused_applies(u.half(), u.half(), *wg)
    with torch.no_grad():
        assert proj.fused_applies(u.half(), u.half(), *wg)

"""GPU tests of the conv+SiLU kernels for every backward tile configuration in ``CANDIDATE_BWD``: against the
session-5 kernels they replaced (benchmarks/conv_v5.py, compiled here too) and against autograd through the
PyTorch reference. Skipped without CUDA or Triton.

Bit for bit: u (one direction and both). dx is the same float32 expression as in the session-5 kernel, but
on an H200 (Triton 3.6) it was not bit-identical (the compiler contracted it differently), with the same error
against the fp32 reference: compared to one or two 16-bit ulps. Up to summation order: the weight and
bias gradients (the new kernel sums them sequentially per channel, the old one per tile across threads)."""

import os
import sys

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
triton = pytest.importorskip("triton")

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import conv_v5  # noqa: E402

from rmeeto.ops import conv  # noqa: E402
from rmeeto.ops.triton import conv as tconv  # noqa: E402

DEV = "cuda"
# + spans cut mid-chunk, and sequence groups that run past the batch (3 sequences)
CONFIGS = tconv.CANDIDATE_BWD + [dict(SPAN=6, SEQS=2, BLOCK_D=32, num_warps=1, num_stages=1)]


@pytest.fixture
def bwd_config(request, monkeypatch):
    monkeypatch.setattr(tconv, "BWD_CONFIG", request.param)
    monkeypatch.setattr(tconv, "BIDIR_BWD_CONFIG", request.param)
    return request.param


def make_inputs(batch, length, dim, dtype, seed):
    gen = torch.Generator(device=DEV).manual_seed(seed)
    x = torch.randn(batch, length, 2 * dim, generator=gen, device=DEV).to(dtype)[..., :dim]  # in_proj's half
    ws = [(torch.randn(dim, 1, 4, generator=gen, device=DEV) * 0.5).to(dtype) for _ in range(2)]
    bs = [torch.randn(dim, generator=gen, device=DEV).to(dtype) for _ in range(2)]
    gs = [torch.randn(batch, length, dim, generator=gen, device=DEV).to(dtype) for _ in range(2)]
    return x, ws, bs, gs


def assert_close_sums(name, got, want):
    """16-bit: every element within one ulp (relative 8e-3, floored at 1e-3) -- both kernels round the same
    float32 value, which may differ in its last float32 bits. float32: normwise, the largest difference against
    the largest value (an element that cancels to near zero keeps the absolute rounding of its terms, so an
    elementwise relative bound would fail on rounding alone)."""
    assert got.shape == want.shape and got.dtype == want.dtype, name
    diff = (got.float() - want.float()).abs()
    if got.dtype == torch.float32:
        err = (diff.max() / want.float().abs().max().clamp_min(1e-30)).item()
        tol = 1e-5
    else:
        err = (diff / want.float().abs().clamp_min(1e-3)).max().item()
        tol = 8e-3
    assert err < tol, f"{name}: {'normwise' if got.dtype == torch.float32 else 'relative'} error {err:.3g}"


@pytest.mark.parametrize("bwd_config", CONFIGS, indirect=True, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("length", [197, 37, 1])
def test_conv_kernels_equal_session5(bwd_config, dtype, length):
    """One direction each way and both directions: u bit for bit, dx to one or two 16-bit ulps (on an H200 the
    new backward's dx was not bit-identical to session 5's, with the same error against the fp32 reference:
    benchmarks/bench_conv_gpu.py, sixth session), dw / db up to summation order (channels 200: not a multiple
    of any channel block)."""
    x, (wf, wb), (bf, bb), (gf, gb) = make_inputs(3, length, 200, dtype, length)
    for rev, w, b, g in ((False, wf, bf, gf), (True, wb, bb, gb)):
        assert torch.equal(tconv._conv_silu_triton_fwd(x, w, b, rev), conv_v5._conv_silu_triton_fwd(x, w, b, rev))
        new, old = tconv._conv_silu_triton_bwd(x, w, b, g, rev), conv_v5._conv_silu_triton_bwd(x, w, b, g, rev)
        assert_close_sums(f"dx (reverse={rev})", new[0], old[0])
        for name, a, c in zip(("dw", "db"), new[1:], old[1:]):
            assert_close_sums(f"{name} (reverse={rev})", a, c)
    for a, c in zip(tconv._conv_silu_bidir_triton_fwd(x, wf, bf, wb, bb),
                    conv_v5._conv_silu_bidir_triton_fwd(x, wf, bf, wb, bb)):
        assert torch.equal(a, c)
    new = tconv._conv_silu_bidir_triton_bwd(x, wf, bf, wb, bb, gf, gb)
    old = conv_v5._conv_silu_bidir_triton_bwd(x, wf, bf, wb, bb, gf, gb)
    assert_close_sums("bidir dx", new[0], old[0])
    for name, a, c in zip(("dwf", "dbf", "dwb", "dbb"), new[1:], old[1:]):
        assert_close_sums(name, a, c)


@pytest.mark.parametrize("bwd_config", CONFIGS, indirect=True, ids=str)
def test_conv_kernels_against_reference(bwd_config, monkeypatch):
    """Vim-S-like shapes (197 tokens, 768 channels) in fp32: outputs and all gradients of the autograd
    functions (one direction each way, both directions) against autograd through the PyTorch reference
    (cuDNN's TF32 off, so the reference is float32 too)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    x, ws, bs, gs = make_inputs(2, 197, 768, torch.float32, 0)
    leaves = [t.clone().requires_grad_() for t in (x, ws[0], bs[0], ws[1], bs[1])]
    for rev in (False, True):
        lv = [leaves[0], leaves[1 + 2 * rev], leaves[2 + 2 * rev]]
        got = tconv.conv_silu_triton(*lv, rev)
        ref = conv.conv_silu_torch(*lv, rev)
        pairs = zip([got, *torch.autograd.grad(got, lv, gs[rev])], [ref, *torch.autograd.grad(ref, lv, gs[rev])])
        for i, (a, r) in enumerate(pairs):
            assert (a - r).abs().max() <= 1e-4 * max(1.0, r.abs().max().item()), (rev, i)
    got = tconv.conv_silu_bidir_triton(*leaves)
    ref = conv.conv_silu_bidir_torch(*leaves)
    pairs = zip([*got, *torch.autograd.grad(got, leaves, gs)], [*ref, *torch.autograd.grad(ref, leaves, gs)])
    for i, (a, r) in enumerate(pairs):
        assert (a - r).abs().max() <= 1e-4 * max(1.0, r.abs().max().item()), ("bidir", i)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("length", [197, 76, 3])
def test_forward_over_flat_rows_equals_tiles_per_sequence(dtype, length):
    """The compiled forward over the batch's flat rows (x in_proj's half: what the mixer passes) and over tiles
    per sequence (x a slice of longer sequences, or ``FWD_FLAT`` off) give the same bits, both directions, and
    the session-5 kernel's (tests/ops/test_conv_kernels.py checks the same under the interpreter)."""
    x, (wf, wb), (bf, bb), _ = make_inputs(5, length, 768, dtype, 7 + length)
    flat = tconv._fwd_launch(x, wf, bf, wb, bb, True, True)
    assert tconv.fwd_spec(x, flat[0], 4)[2].get("FLAT")
    xs = torch.empty(5, length + 5, 768, device=DEV, dtype=dtype)[:, :length]
    xs.copy_(x)
    assert not tconv.fwd_spec(xs, flat[0], 4)[2].get("FLAT")
    for a, b, c in zip(flat, tconv._fwd_launch(xs, wf, bf, wb, bb, True, True),
                       conv_v5._conv_silu_bidir_triton_fwd(x, wf, bf, wb, bb)):
        assert torch.equal(a, b) and torch.equal(a, c)

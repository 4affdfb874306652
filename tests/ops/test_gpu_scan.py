"""GPU tests of the fused Triton selective scan (forward and all gradients) against the float64 reference.

Skipped without CUDA or Triton. Every buffer the op allocates is filled with NaN first (``triton_scan._POISON``),
so an element a kernel forgets to write fails the comparison.
"""

import zlib

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.usefixtures("poison_scan_buffers"),
]
triton = pytest.importorskip("triton")

from rmeeto.ops.triton import scan as triton_scan  # noqa: E402
from rmeeto.ops.selective_scan import resolve_backend, selective_scan, selective_scan_ref  # noqa: E402

DEV = "cuda"
MERGE_SCHEDULE = [186, 175, 164, 153, 142, 131, 120, 109, 98, 87, 76]
TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 1e-2}
NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]


def make_inputs(batch, dim, length, dstate, dtype, opts="Dzbs", seed=0):
    """Realistic magnitudes: A = -(1..dstate) (jittered per channel), delta ~ N(-2, 0.5) before softplus,
    u, B, C, z ~ N(0, 1). opts: D = skip term, z = gate, b = delta_bias, s = softplus."""
    g = torch.Generator(device=DEV).manual_seed(seed)

    def rn(*shape):
        return torch.randn(*shape, generator=g, device=DEV)

    u = rn(batch, dim, length).to(dtype)
    delta = rn(batch, dim, length) * 0.5 - 2.0
    softplus = "s" in opts
    if not softplus:  # no softplus inside the scan: hand it positive step sizes
        delta = torch.nn.functional.softplus(delta)
    delta = delta.to(dtype)
    A = -torch.exp(torch.log(torch.arange(1, dstate + 1, device=DEV, dtype=torch.float32))).repeat(dim, 1)
    A = A * (1 + 0.1 * torch.rand(dim, dstate, generator=g, device=DEV))
    B = rn(batch, dstate, length).to(dtype)
    C = rn(batch, dstate, length).to(dtype)
    D = rn(dim) if "D" in opts else None
    z = rn(batch, dim, length).to(dtype) if "z" in opts else None
    if "b" in opts:  # keep delta + bias positive when no softplus follows
        bias = rn(dim) * 0.5 - 0.5 if softplus else rn(dim).abs() * 0.1
    else:
        bias = None
    return [u, delta, A, B, C, D, z, bias], softplus


def rel_err(x, ref):
    x, ref = x.double(), ref.double()
    assert torch.isfinite(x).all(), "non-finite values (unwritten element?)"
    return ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def check(inputs, softplus, reverse, tol, grads=True, seed=1):
    leaves = [None if t is None else t.clone().requires_grad_(grads) for t in inputs]
    ref_leaves = [None if t is None else t.detach().double().requires_grad_(grads) for t in inputs]
    out = triton_scan.selective_scan_triton(*leaves, delta_softplus=softplus, reverse=reverse)
    ref = selective_scan_ref(*ref_leaves, delta_softplus=softplus, reverse=reverse)
    assert out.dtype == inputs[0].dtype and out.shape == inputs[0].shape
    errs = {"out": rel_err(out, ref)}
    if grads:
        gen = torch.Generator(device=DEV).manual_seed(seed)
        gout = torch.randn(ref.shape, generator=gen, device=DEV, dtype=torch.float64).to(out.dtype)
        out.backward(gout)
        ref.backward(gout.double())
        for name, x, xr in zip(NAMES, leaves, ref_leaves):
            if x is None:
                continue
            assert x.grad is not None and x.grad.dtype == x.dtype and x.grad.shape == x.shape, name
            if xr.grad.norm() == 0:  # e.g. dA for length 1 (no previous state): zero up to rounding
                assert x.grad.abs().max() < 1e-6, name
                continue
            errs["d" + name] = rel_err(x.grad, xr.grad)
    bad = {k: v for k, v in errs.items() if not v < tol}
    assert not bad, f"relative errors over {tol}: {bad} (all: {errs})"
    return errs


# (dtype, opts) combinations; every one is run in both directions
MATRIX = [
    (torch.float32, "Dzbs"),
    (torch.float32, ""),
    (torch.float32, "Ds"),
    (torch.float32, "zb"),
    (torch.bfloat16, "Dzbs"),
    (torch.bfloat16, ""),
    (torch.float16, "Dzbs"),
]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype,opts", MATRIX)
def test_matrix(dtype, opts, reverse):
    # dim 40 is not a multiple of the channel block; length 65 ends with a partial chunk
    inputs, sp = make_inputs(2, 40, 65, 16, dtype, opts, seed=zlib.crc32(f"{dtype}{opts}{reverse}".encode()))
    check(inputs, sp, reverse, TOL[dtype])


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_is_log(dtype, reverse):
    """A given as A_log (the model's parameter, ``a_is_log=True``): same output as A = -exp(A_log) and
    dA_log = dA * A, against the float64 reference."""
    inputs, sp = make_inputs(2, 40, 197, 16, dtype, "Dzbs", seed=11 + reverse)
    A_log = torch.log(-inputs[2])
    leaves = [t.clone().requires_grad_() for t in inputs]
    leaves[2] = A_log.clone().requires_grad_()
    ref_leaves = [t.detach().double().requires_grad_() for t in inputs]
    ref_leaves[2] = A_log.detach().double().requires_grad_()
    out = triton_scan.selective_scan_triton(*leaves, delta_softplus=sp, reverse=reverse, a_is_log=True)
    ref = selective_scan_ref(*ref_leaves[:2], -torch.exp(ref_leaves[2]), *ref_leaves[3:], delta_softplus=sp,
                             reverse=reverse)
    gout = torch.randn(ref.shape, device=DEV, dtype=torch.float64)
    out.backward(gout.to(out.dtype))
    ref.backward(gout)
    tol = TOL[dtype]
    assert rel_err(out, ref) < tol
    for name, x, xr in zip(NAMES, leaves, ref_leaves):
        assert rel_err(x.grad, xr.grad) < tol, name


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("length", [1, 2, 7, 33, 64, 65, 197, 300] + MERGE_SCHEDULE)
def test_lengths_fp32(length, reverse):
    inputs, sp = make_inputs(2, 24, length, 16, torch.float32, "Dzbs", seed=length)
    check(inputs, sp, reverse, TOL[torch.float32])


@pytest.mark.parametrize("length", [1, 7, 197, 98])
def test_lengths_bf16(length):
    inputs, sp = make_inputs(2, 24, length, 16, torch.bfloat16, "Dzbs", seed=length + 7)
    check(inputs, sp, length % 2 == 0, TOL[torch.bfloat16])


@pytest.mark.parametrize("dstate", [1, 5, 12])
def test_dstate_not_power_of_two(dstate):
    inputs, sp = make_inputs(3, 20, 50, dstate, torch.float32, "Dzbs", seed=dstate)
    check(inputs, sp, dstate % 2 == 1, TOL[torch.float32])


@pytest.mark.parametrize("pack", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("reverse", [False, True])
def test_vim_layout_strided_views(reverse, dtype, pack, monkeypatch):
    """The layout Vim's mixer hands the scan: u, delta and z channel-last views, B and C from a split of one
    [batch, length, r + 2n] projection, transposed (non-contiguous); nothing is copied. B and C are read as
    one aligned vector load per token row (pack: dt_rank 24 makes the rows 16-byte aligned in every dtype) or one
    element at a time; outputs and gradients come back channels-last."""
    monkeypatch.setattr(triton_scan, "_PACK_BC", pack)
    batch, dim, length, n, r = 2, 48, 197, 16, 24
    g = torch.Generator(device=DEV).manual_seed(3)
    x_dbl = torch.randn(batch, length, r + 2 * n, generator=g, device=DEV).to(dtype)
    _, Bm, Cm = x_dbl.split([r, n, n], dim=-1)
    xz = torch.randn(batch, length, 2 * dim, generator=g, device=DEV).to(dtype).transpose(1, 2)
    z = xz.chunk(2, dim=1)[1]
    delta = (torch.randn(batch, length, dim, generator=g, device=DEV) * 0.5 - 2).to(dtype).transpose(1, 2)
    u = torch.randn(batch, length, dim, generator=g, device=DEV).to(dtype).transpose(1, 2)
    A = -torch.arange(1, n + 1, device=DEV, dtype=torch.float32).repeat(dim, 1)
    D = torch.randn(dim, generator=g, device=DEV)
    bias = torch.randn(dim, generator=g, device=DEV) * 0.5 - 0.5
    B, C = Bm.transpose(1, 2), Cm.transpose(1, 2)
    assert not B.is_contiguous() and not delta.is_contiguous() and not z.is_contiguous()
    assert triton_scan._bc_mode(B, C) == ((3 if dtype == torch.float32 else 2) if pack else 0)
    check([u, delta, A, B, C, D, z, bias], True, reverse, TOL[dtype])
    with torch.no_grad():
        out = triton_scan.selective_scan_triton(u, delta, A, B, C, D, z, bias, delta_softplus=True)
    assert out.transpose(1, 2).is_contiguous()  # channels-last, like u


def test_noncontiguous_grad_output():
    inputs, sp = make_inputs(2, 24, 40, 16, torch.float32, "Dzbs", seed=11)
    leaves = [None if t is None else t.clone().requires_grad_() for t in inputs]
    ref_leaves = [None if t is None else t.detach().double().requires_grad_() for t in inputs]
    out = triton_scan.selective_scan_triton(*leaves, delta_softplus=sp)
    ref = selective_scan_ref(*ref_leaves, delta_softplus=sp)
    w = torch.randn(40, device=DEV)
    (out * w).sum().backward()  # grad_output is an expanded (stride-0) tensor
    (ref * w.double()).sum().backward()
    for name, x, xr in zip(NAMES, leaves, ref_leaves):
        assert rel_err(x.grad, xr.grad) < 1e-4, name


def test_deterministic():
    inputs, sp = make_inputs(2, 40, 97, 16, torch.float32, "Dzbs", seed=5)

    def run():
        leaves = [t.clone().requires_grad_() for t in inputs]
        out = triton_scan.selective_scan_triton(*leaves, delta_softplus=sp, reverse=True)
        out.square().sum().backward()
        return [out.detach()] + [x.grad for x in leaves]

    for a, b in zip(run(), run()):
        assert torch.equal(a, b)


def test_no_grad_inputs_and_dispatch():
    inputs, sp = make_inputs(1, 16, 20, 16, torch.bfloat16, "Dzbs", seed=2)
    assert resolve_backend("auto", torch.device(DEV)) == "triton"
    out = selective_scan(*inputs, delta_softplus=sp, reverse=True)
    ref = selective_scan_ref(*[None if t is None else t.double() for t in inputs], delta_softplus=sp, reverse=True)
    assert rel_err(out, ref) < 1e-2


def test_torch_compile_fullgraph():
    inputs, sp = make_inputs(2, 24, 50, 16, torch.float32, "Dzbs", seed=4)

    def f(u, delta, A, B, C, D, z, bias):
        y = triton_scan.selective_scan_triton(torch.tanh(u), delta, A, B, C, D, z, bias, delta_softplus=True)
        y2 = triton_scan.selective_scan_triton(u, delta, A, B, C, D, z, bias, delta_softplus=True, reverse=True)
        return (y * y2).sum()

    def grads(fn):
        leaves = [t.clone().requires_grad_() for t in inputs]
        loss = fn(*leaves)
        return [loss.detach()] + list(torch.autograd.grad(loss, leaves))

    torch._dynamo.reset()
    eager = grads(f)
    compiled = grads(torch.compile(f, fullgraph=True))
    for a, b in zip(eager, compiled):
        assert rel_err(b, a) < 1e-5


@pytest.mark.parametrize("a_is_log", [False, True])
def test_opcheck(a_is_log):
    inputs, sp = make_inputs(1, 16, 20, 16, torch.float32, "Dzbs", seed=9)
    if a_is_log:
        inputs[2] = torch.log(-inputs[2])
    leaves = [t.clone().requires_grad_() for t in inputs]
    torch.library.opcheck(torch.ops.rmeeto.selective_scan.default, (*leaves, True, False, a_is_log))


@pytest.mark.parametrize("which", range(len(triton_scan.CANDIDATE_FWD)))
def test_tile_configs(which, monkeypatch):
    """Every candidate forward tile configuration the benchmark may pick computes the same thing, forward and
    gradients (the backward with its default BWD_XLANE_CONFIG; tests/ops/test_scan_bwd.py checks every one of
    scan_bwd.CANDIDATE_BWD_XLANE)."""
    monkeypatch.setattr(triton_scan, "FWD_CONFIG", dict(triton_scan.CANDIDATE_FWD[which]))
    inputs, sp = make_inputs(2, 40, 197, 16, torch.bfloat16, "Dzbs", seed=100 + which)
    check(inputs, sp, which % 2 == 1, TOL[torch.bfloat16])
    inputs, sp = make_inputs(1, 24, 33, 16, torch.float32, "Dzbs", seed=200 + which)
    check(inputs, sp, which % 2 == 0, TOL[torch.float32])

"""The chunked selective scan (CPU default) computes the same function as the sequential reference."""

import pytest
import torch

from rmeeto.ops.selective_scan import (
    available_backends,
    resolve_backend,
    selective_scan,
    selective_scan_bidir,
    selective_scan_bidir_ref,
    selective_scan_chunked,
    selective_scan_ref,
    set_default_backend,
    sum_directions,
)


def make_inputs(batch, dim, dstate, length, dtype, seed, with_z=True):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    u = r(batch, dim, length).to(dtype)
    delta = (r(batch, dim, length) * 0.5 - 1.0).to(dtype)
    # official init: A = -(1..N) per channel; perturb so channels differ
    A = -(torch.arange(1, dstate + 1).float().repeat(dim, 1) * torch.exp(r(dim, dstate) * 0.3))
    B = r(batch, dstate, length).to(dtype)
    C = r(batch, dstate, length).to(dtype)
    D = r(dim)
    z = r(batch, dim, length).to(dtype) if with_z else None
    bias = r(dim) * 0.5
    return u, delta, A, B, C, D, z, bias


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


LENGTHS = [1, 2, 3, 7, 31, 32, 33, 64, 76, 97, 197, 300]


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("reverse", [False, True])
def test_chunked_matches_reference_fp32(length, reverse):
    g = torch.Generator().manual_seed(length)
    batch, dim = int(torch.randint(1, 4, (1,), generator=g)), int(torch.randint(1, 24, (1,), generator=g))
    args = make_inputs(batch, dim, 16, length, torch.float32, seed=length + 7 * reverse)
    u, delta, A, B, C, D, z, bias = args
    ref = selective_scan_ref(u, delta, A, B, C, D, z, bias, delta_softplus=True, reverse=reverse)
    out = selective_scan_chunked(u, delta, A, B, C, D, z, bias, delta_softplus=True, reverse=reverse, chunk_size=16)
    assert out.dtype == torch.float32 and out.shape == u.shape
    assert rel(out, ref) < 1e-5


@pytest.mark.parametrize("length", [1, 17, 197])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_accumulate_in_fp32(length, dtype):
    u, delta, A, B, C, D, z, bias = make_inputs(2, 8, 16, length, dtype, seed=3)
    ref64 = selective_scan_ref(u.double(), delta.double(), A.double(), B.double(), C.double(), D.double(),
                               z.double(), bias.double(), delta_softplus=True)
    for fn in (selective_scan_ref, selective_scan_chunked):
        out = fn(u, delta, A, B, C, D, z, bias, delta_softplus=True)
        assert out.dtype == dtype
        # only the final cast rounds: error of one bf16/fp16 rounding, not of 197 accumulated ones
        assert rel(out, ref64) < (8e-3 if dtype == torch.bfloat16 else 1e-3)


@pytest.mark.parametrize("length,reverse", [(1, False), (13, True), (40, False), (77, True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_gradients_match_reference(length, reverse, dtype):
    base = make_inputs(2, 6, 16, length, dtype, seed=11 + length)

    def grads(fn):
        leaves = [t.detach().clone().requires_grad_(True) for t in base]
        out = fn(*leaves[:5], leaves[5], leaves[6], leaves[7], delta_softplus=True, reverse=reverse)
        w = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
        (out.float() * w).sum().backward()
        return [t.grad for t in leaves]

    g_ref = grads(selective_scan_ref)
    g_chk = grads(lambda *a, **k: selective_scan_chunked(*a, **k, chunk_size=8))  # chunk boundaries inside
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for name, a, b in zip(["u", "delta", "A", "B", "C", "D", "z", "delta_bias"], g_chk, g_ref):
        assert a is not None and b is not None, name
        assert rel(a, b) < tol, name


def test_reverse_equals_flip_scan_flip():
    u, delta, A, B, C, D, z, bias = make_inputs(1, 4, 16, 23, torch.float32, seed=1)
    rev = selective_scan_chunked(u, delta, A, B, C, D, z, bias, True, reverse=True)
    f = lambda t: t.flip(-1)  # noqa: E731
    manual = f(selective_scan_ref(f(u), f(delta), A, f(B), f(C), D, f(z), bias, True))
    assert rel(rev, manual) < 1e-6
    fwd = selective_scan_chunked(u, delta, A, B, C, D, z, bias, True, reverse=False)
    assert rel(rev, fwd) > 1e-2  # the direction matters


def test_large_decay_does_not_overflow():
    u, delta, A, B, C, D, z, bias = make_inputs(1, 4, 16, 100, torch.float32, seed=2)
    delta = delta + 8.0  # dt ~ 7, dt * A down to -110 per step: exp of a cumulative sum would overflow
    out = selective_scan_chunked(u, delta, A, B, C, D, z, bias, True)
    ref = selective_scan_ref(u, delta, A, B, C, D, z, bias, True)
    assert torch.isfinite(out).all() and rel(out, ref) < 1e-5


def test_dispatch_and_forcing():
    assert resolve_backend("auto", torch.device("cpu")) == "chunked"
    assert {"reference", "chunked"} <= set(available_backends("cpu"))
    with pytest.raises(ValueError, match="choose from"):
        resolve_backend("nope", torch.device("cpu"))
    u, delta, A, B, C, D, z, bias = make_inputs(1, 4, 16, 9, torch.float32, seed=4)
    set_default_backend("reference")
    try:
        assert resolve_backend("auto", torch.device("cpu")) == "reference"
        a = selective_scan(u, delta, A, B, C, D, z, bias, True)
    finally:
        set_default_backend("auto")
    b = selective_scan(u, delta, A, B, C, D, z, bias, True, backend="chunked")
    assert rel(a, b) < 1e-6
    with pytest.raises(ValueError, match="delta shape"):
        selective_scan(u, delta[..., :-1], A, B, C)


def test_dispatch_a_is_log_means_minus_exp():
    """selective_scan(..., A_log, a_is_log=True) is selective_scan(..., -exp(A_log)) on every CPU backend."""
    from rmeeto.ops.selective_scan import selective_scan

    torch.manual_seed(0)
    b, d, L, n = 2, 6, 9, 4
    u, delta, z = torch.randn(b, d, L), torch.randn(b, d, L) - 1, torch.randn(b, d, L)
    A_log = torch.randn(d, n) * 0.5
    B, C, D, bias = torch.randn(b, n, L), torch.randn(b, n, L), torch.randn(d), torch.randn(d)
    for backend in ("reference", "chunked"):
        for reverse in (False, True):
            got = selective_scan(u, delta, A_log, B, C, D, z, bias, True, reverse, backend=backend, a_is_log=True)
            want = selective_scan(u, delta, -torch.exp(A_log), B, C, D, z, bias, True, reverse, backend=backend)
            torch.testing.assert_close(got, want)
            assert not torch.allclose(got, selective_scan(u, delta, A_log, B, C, D, z, bias, True, reverse,
                                                          backend=backend))


@pytest.mark.parametrize("backend", ["chunked", "reference"])
def test_bidir_is_two_scans(backend):
    """selective_scan_bidir on the CPU backends: y2[0] / y2[1] are the forward / reverse scans of each
    direction's own inputs with the shared z, times scale; its gradients are theirs (scale 0.5, A as A_log)."""
    f = make_inputs(2, 6, 4, 9, torch.float32, seed=1)
    b = make_inputs(2, 6, 4, 9, torch.float32, seed=2)
    z = f[6].clone().requires_grad_()
    leaves = [[t.clone().requires_grad_() for t in x] for x in (f, b)]
    A_log = [torch.log(-x[2]).detach().requires_grad_() for x in (f, b)]
    pairs = [(leaves[0][i], leaves[1][i]) for i in range(6)]
    pairs[2] = tuple(A_log)
    y2 = selective_scan_bidir(*pairs, z=z, delta_bias=(leaves[0][7], leaves[1][7]), delta_softplus=True,
                              scale=0.5, backend=backend, a_is_log=True)
    want = [selective_scan(*[p[r] for p in pairs], z=z, delta_bias=leaves[r][7], delta_softplus=True,
                           reverse=bool(r), backend=backend, a_is_log=True) for r in (0, 1)]
    assert y2.shape == (2, 2, 6, 9)
    assert torch.equal(y2[0], want[0] * 0.5) and torch.equal(y2[1], want[1] * 0.5)
    assert not torch.allclose(y2[0], y2[1])  # the directions really differ
    params = [t for x in leaves for t in x if t is not z] + A_log + [z]
    g = torch.randn(y2.shape)
    got = torch.autograd.grad(y2, params, g, allow_unused=True)
    ref = torch.autograd.grad(want, params, [g[0] * 0.5, g[1] * 0.5], allow_unused=True)
    for x, y in zip(got, ref):
        assert (x is None and y is None) or torch.allclose(x, y, rtol=1e-6, atol=1e-7)


def test_bidir_reference_matches_dispatch_and_checks_pairs():
    """The reference (sequential scans) agrees with the chunked dispatch; malformed pairs are named."""
    f = make_inputs(1, 5, 3, 4, torch.float32, seed=3)
    b = make_inputs(1, 5, 3, 4, torch.float32, seed=4)
    pairs = [(x, y) for x, y in zip(f, b)]
    args = pairs[:6]
    ref = selective_scan_bidir_ref(*args, z=f[6], delta_bias=pairs[7], delta_softplus=True)
    got = selective_scan_bidir(*args, z=f[6], delta_bias=pairs[7], delta_softplus=True, backend="chunked")
    assert torch.allclose(ref, got, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="u must be a pair"):
        selective_scan_bidir((f[0],), *args[1:])
    with pytest.raises(ValueError, match="delta shape"):
        selective_scan_bidir(args[0], (f[1], b[1][..., :-1]), *args[2:])


def test_the_two_directions_share_a_layout_only_when_every_stride_that_matters_agrees():
    # the bidirectional launcher passes one set of strides for both directions' tensors: a False here when
    # they differ is what keeps one direction from being read with the other's strides
    ts = pytest.importorskip("rmeeto.ops.triton.scan")
    x = torch.zeros(2, 3, 5)
    assert ts._same_layout(x, torch.ones(2, 3, 5))
    assert not ts._same_layout(x, torch.zeros(2, 5, 3).transpose(1, 2))  # channels-last vs contiguous
    assert not ts._same_layout(x, x.double()) and not ts._same_layout(x, x[:, :, :4])
    one = torch.zeros(1, 3, 5)  # a size-1 batch: its stride is never used, so it may differ
    strided = torch.zeros(4, 3, 5)[::2][:1]
    assert strided.stride(0) != one.stride(0) and ts._same_layout(one, strided)
    assert ts._same_layout(torch.zeros(1, 3, 5), torch.zeros(1, 5, 3).transpose(1, 2)[:, :, :]) is False
    f, b = ts._pair("u", x, torch.zeros(2, 5, 3).transpose(1, 2))  # differing layouts: both made contiguous
    assert f.is_contiguous() and b.is_contiguous()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [True, False])
def test_sum_directions_is_the_reduction_bit_for_bit_with_its_gradient(dtype, channels_last):
    """sum_directions (one add, a broadcast backward) gives the bits of y2.transpose(2, 3).sum(0) and the
    same gradient, for y2 stored channels-last (as the kernels return it) or not."""
    g = torch.Generator().manual_seed(5)
    shape = (2, 3, 7, 11)  # [2, batch, dim, L]
    base = torch.randn(2, 3, 11, 7, generator=g).to(dtype).transpose(2, 3) if channels_last else \
        torch.randn(*shape, generator=g).to(dtype)
    w = torch.randn(3, 11, 7, generator=g).to(dtype)
    got_in = base.clone().requires_grad_(True)
    ref_in = base.clone().requires_grad_(True)
    got, ref = sum_directions(got_in), ref_in.transpose(2, 3).sum(0)
    assert got.shape == ref.shape == (3, 11, 7) and got.dtype == dtype
    assert torch.equal(got, ref)
    (got * w).sum().backward()
    (ref * w).sum().backward()
    assert torch.equal(got_in.grad, ref_in.grad)
    assert torch.equal(got_in.grad[0], w.transpose(1, 2)) and torch.equal(got_in.grad[1], w.transpose(1, 2))
    with torch.no_grad():
        assert torch.equal(sum_directions(base), ref.detach())
    with pytest.raises(ValueError, match=r"\[2, batch, dim, L\]"):
        sum_directions(base[:1])

"""The reduce-scatter selective-scan backward (rmeeto.ops.triton.scan_bwd) against the reference gradients.

Interpreter tests (CPU, TRITON_INTERPRET=1 in a subprocess; skipped where CUDA is available): the lane
exchange is a ``tl.gather``, which the interpreter runs, so the whole reduce-scatter (which lane ends with
which dB / dC entry, the dstate < 16 and dstate 32 cases, partial channel blocks) is checked here too, not
only the rest of the kernel. What only the GPU tests check: that the compiled gather is a warp shuffle with
the lane <-> channel mapping the kernel assumes, the maxnreg configs, bf16 rounding, and agreement with the
same body's per-value ``tl.sum`` reductions (``XLANE=False``: another way to sum dB / dC) for every config.
"""

import os
import subprocess
import sys
import textwrap
import zlib

import pytest
import torch

triton = pytest.importorskip("triton")

from rmeeto.ops.selective_scan import selective_scan_ref  # noqa: E402
from rmeeto.ops.triton import scan as ts  # noqa: E402
from rmeeto.ops.triton import scan_bwd as sb  # noqa: E402


# Helpers shared by the GPU tests and the interpreter script (which imports this file by path).
def make(b, d, L, n, opts, dtype, dev, seed):
    """Inputs (u, delta, A, B, C, D, z, delta_bias; opts: D skip, z gate, b delta_bias, s softplus), the
    softplus flag and a gradient of the output."""
    g = torch.Generator(device=dev).manual_seed(seed)
    rn = lambda *s: torch.randn(*s, generator=g, device=dev)  # noqa: E731
    sp = "s" in opts
    delta = rn(b, d, L) * 0.5 - 1
    if not sp:  # positive step sizes when no softplus follows
        delta = torch.nn.functional.softplus(delta)
    A = -torch.rand(d, n, generator=g, device=dev) * 3 - 0.1
    ins = [rn(b, d, L).to(dtype), delta.to(dtype), A, rn(b, n, L).to(dtype), rn(b, n, L).to(dtype),
           rn(d) if "D" in opts else None, rn(b, d, L).to(dtype) if "z" in opts else None,
           (rn(d) * 0.3 if sp else rn(d).abs() * 0.1) if "b" in opts else None]
    return ins, sp, rn(b, d, L).to(dtype)


def ref_grads(ins, sp, reverse, dout):
    """(du, ddelta, dA, dB, dC, dD, dz, dbias) of the float64 reference (None for absent inputs)."""
    leaves = [None if t is None else t.detach().double().requires_grad_() for t in ins]
    out = selective_scan_ref(*leaves, delta_softplus=sp, reverse=reverse)
    present = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad(out, present, dout.double()))
    g = [None if t is None else next(grads) for t in leaves]
    return tuple(g)


def rel_errs(got, want):
    """Relative norm error of each of the backward's eight outputs present in want; inf when not finite or
    of the wrong shape / dtype."""
    names = ["du", "ddelta", "dA", "dB", "dC", "dD", "dz", "dbias"]
    errs = {}
    for name, x, y in zip(names, got, want):
        if y is None:
            continue
        if x.shape != y.shape or not torch.isfinite(x).all():
            errs[name] = float("inf")
            continue
        x, y = x.double(), y.double()
        errs[name] = ((x - y).norm() / y.norm().clamp_min(1e-30)).item()
    return errs


def run_interpreted(code: str) -> None:
    env = dict(os.environ, TRITON_INTERPRET="1")
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    env["PYTHONPATH"] = os.pathsep.join([src] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    head = (f"import importlib.util, torch\n"
            f"spec = importlib.util.spec_from_file_location('cases', {os.path.abspath(__file__)!r})\n"
            "cases = importlib.util.module_from_spec(spec); spec.loader.exec_module(cases)\n"
            "make, ref_grads, rel_errs, ts, sb = cases.make, cases.ref_grads, cases.rel_errs, cases.ts, cases.sb\n")
    proc = subprocess.run([sys.executable, "-c", head + textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA machines test the compiled kernel instead")
def test_interpreted_equals_reference():
    """Every gradient of the new backward equals the reference's (float32: 1e-5 relative; bfloat16 inputs,
    which the interpreter truncates instead of rounding: 2e-2), both directions, with and without D, z,
    delta_bias and softplus, odd lengths (a partial last chunk), dim 40 (a partial warp), dstate 16, 5, 2 and
    32 (a full, a partial and no reduce-scatter level with one row left; two rows left), CHUNK 1 (B and C
    kept or reloaded for the adjoint step) and 2, with and without prefetching, lengths 1 and 2,
    two warps per program; the tl.sum path (XLANE=False) too. Buffers start as NaN (scan._POISON)."""
    run_interpreted("""
        import sys
        ts._POISON = True
        bad = []
        cfg2 = {"BLOCK_D": 32, "CHUNK": 2, "num_warps": 1}
        cases = []  # (b, d, L, n, opts, reverse, dtype, xlane, cfg)
        for reverse in (False, True):
            for opts in ("Dzbs", ""):
                cases.append((2, 40, 5, 16, opts, reverse, torch.float32, True, cfg2))
            cases.append((2, 40, 5, 5, "Dzb", reverse, torch.float32, True, cfg2))
            cases.append((1, 36, 3, 16, "Dzbs", reverse, torch.bfloat16, True, cfg2))
        cases.append((1, 40, 4, 2, "zs", True, torch.float32, True, cfg2))
        cases.append((1, 33, 3, 32, "Ds", False, torch.float32, True, cfg2))
        cases.append((2, 40, 5, 16, "Dzbs", True, torch.float32, False, cfg2))
        cfg1 = {"BLOCK_D": 32, "CHUNK": 1, "num_warps": 1}
        cases.append((1, 40, 3, 12, "Dzbs", False, torch.float32, True, cfg1))
        cases.append((1, 40, 3, 16, "Dzbs", True, torch.float32, True, dict(cfg1, reuse_bc=False)))
        cases.append((1, 70, 3, 16, "bs", True, torch.float32, True, {"BLOCK_D": 64, "CHUNK": 2, "num_warps": 2}))
        # prefetching the next chunk: several chunks, one partial chunk, a single token
        for L, reverse in ((5, False), (2, True), (1, False)):
            cases.append((1, 40, L, 16, "Dzbs", reverse, torch.float32, True, dict(cfg2, prefetch=True)))
        cases.append((1, 40, 3, 16, "Dzbs", True, torch.float32, True, dict(cfg1, prefetch=True)))
        cases.append((1, 40, 1, 16, "Dzbs", False, torch.float32, True, cfg2))
        for seed, (b, d, L, n, opts, reverse, dtype, xlane, cfg) in enumerate(cases):
            sb.XLANE, sb.BWD_XLANE_CONFIG = xlane, cfg
            ins, sp, dout = make(b, d, L, n, opts, dtype, "cpu", seed)
            got = sb.bwd(dout, *ins, sp, reverse)
            want = ref_grads(ins, sp, reverse, dout)
            tol = 1e-5 if dtype == torch.float32 else 2e-2
            errs = rel_errs(got, want)
            if not all(e < tol for e in errs.values()) or got[6].numel() != (0 if ins[6] is None else dout.numel()):
                bad.append((b, d, L, n, opts, reverse, dtype, xlane, cfg, errs))
            for x, t in zip(got[:2], ins[:2]):  # du, ddelta come back in the inputs' dtypes
                if x.dtype != t.dtype:
                    bad.append(("dtype", x.dtype, t.dtype))
        print("FAILURES", bad)
        sys.exit(1 if bad else 0)
    """)


def bidir_inputs(b, d, L, n, dtype, dev, channels_last, with_z, seed):
    """The fifteen tensors of sb.bwd_bidir (u_f, u_b, delta_f, delta_b, A_f, A_b (as A_log), B_f, B_b, C_f,
    C_b, D_f, D_b, z, bias_f, bias_b) and a [2, batch, dim, L] output gradient."""
    g = torch.Generator(device=dev).manual_seed(seed)
    rn = lambda *s: torch.randn(*s, generator=g, device=dev)  # noqa: E731

    def act():
        return (rn(b, L, d).transpose(1, 2) if channels_last else rn(b, d, L)).to(dtype)

    def bc():  # a slice of x_proj's output, as in the mixer
        return rn(b, L, 2 * n + 3)[..., 3:3 + n].to(dtype).transpose(1, 2)

    pairs = [(act(), act()), ((act().float() * 0.5 - 1).to(dtype), (act().float() * 0.5 - 1).to(dtype)),
             (rn(d, n) * 0.5, rn(d, n) * 0.5), (bc(), bc()), (bc(), bc()), (rn(d), rn(d))]
    ins = [t for p in pairs for t in p] + [act() if with_z else None, rn(d) * 0.3, rn(d) * 0.3]
    dout = (rn(2, b, L, d).transpose(2, 3) if channels_last else rn(2, b, d, L)).to(dtype)
    return ins, dout


def bidir_ref_grads(ins, dout, softplus, scale):
    """bwd_bidir's eight outputs (A given as A_log) from the float64 reference of both directions
    (selective_scan_bidir_ref): [2, ...] stacks, dz summed over the directions, None for absent inputs."""
    from rmeeto.ops.selective_scan import selective_scan_bidir_ref

    leaves = [None if t is None else t.detach().double().requires_grad_() for t in ins]
    u, delta, A_log, B, C, D = (leaves[2 * i:2 * i + 2] for i in range(6))
    z, bias = leaves[12], leaves[13:15]
    A = [-torch.exp(a) for a in A_log]
    y2 = selective_scan_bidir_ref(u, delta, A, B, C, None if D[0] is None else D, z,
                                  None if bias[0] is None else bias, softplus, scale)
    present = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad(y2, present, dout.double()))
    g = [None if t is None else next(grads) for t in leaves]
    pair = lambda i: None if g[i] is None else torch.stack([g[i], g[i + 1]])  # noqa: E731
    return pair(0), pair(2), pair(4), pair(6), pair(8), pair(10), g[12], pair(13)


@pytest.mark.full  # tests/ops/test_interpreted.py covers the default config's two-direction backward
@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA machines test the compiled kernel instead")
def test_interpreted_bidir_equals_reference_and_tl_sum():
    """bwd_bidir (both directions in one launch) against the float64 reference of the two directions (1e-5
    relative) and against the same kernel with the per-value tl.sum reductions (XLANE=False): all eight outputs,
    same shapes, dtypes and strides, values within 1e-5 (float32; the dB / dC sums are added in another order).
    A given as A_log, scale 0.5, channels-last and contiguous inputs, odd lengths and dstate, with and without
    z."""
    run_interpreted("""
        import sys
        bidir_inputs, bidir_ref_grads = cases.bidir_inputs, cases.bidir_ref_grads
        ts._POISON = True
        bad = []
        cases_ = [((2, 40, 5, 16), True, True, {"BLOCK_D": 32, "CHUNK": 2, "num_warps": 1}),
                  ((1, 33, 4, 5), False, False, {"BLOCK_D": 32, "CHUNK": 2, "num_warps": 1, "prefetch": True}),
                  ((1, 40, 3, 16), True, True, {"BLOCK_D": 32, "CHUNK": 1, "num_warps": 1, "reuse_bc": False})]
        for seed, ((b, d, L, n), cl, with_z, cfg) in enumerate(cases_):
            sb.BWD_XLANE_CONFIG = cfg
            ins, dout = bidir_inputs(b, d, L, n, torch.float32, "cpu", cl, with_z, seed)
            sb.XLANE = True
            new = sb.bwd_bidir(dout, *ins, True, 0.5, True)
            sb.XLANE = False
            tl_sum = sb.bwd_bidir(dout, *ins, True, 0.5, True)
            errs = rel_errs(new, bidir_ref_grads(ins, dout, True, 0.5))
            if not all(e < 1e-5 for e in errs.values()):
                bad.append(("reference", seed, errs))
            for i, (x, y) in enumerate(zip(new, tl_sum)):
                if x.shape != y.shape or x.dtype != y.dtype or (x.numel() and x.stride() != y.stride()):
                    bad.append(("layout", seed, i))
                elif x.numel() and ((x - y).abs().max() > 1e-5 * max(1.0, y.abs().max().item())
                                    or not torch.isfinite(x).all()):
                    bad.append(("value", seed, i, (x - y).abs().max().item()))
        print("FAILURES", bad)
        sys.exit(1 if bad else 0)
    """)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA machines test the compiled kernel instead")
def test_interpreted_bad_config():
    """A config whose warps do not hold one channel per lane is refused with the reason."""
    run_interpreted("""
        sb.BWD_XLANE_CONFIG = {"BLOCK_D": 64, "CHUNK": 2, "num_warps": 1}
        ins, sp, dout = make(1, 8, 3, 4, "s", torch.float32, "cpu", 0)
        try:
            sb.bwd(dout, *ins, sp, False)
        except ValueError as e:
            assert "BLOCK_D == 32 * num_warps" in str(e), e
        else:
            raise AssertionError("no error")
    """)


# ------------------------------------------------------------------------------------------------ GPU
TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 1e-2}  # those of tests/ops/test_gpu_scan.py


def vim_inputs(batch, dim, length, n, dtype, seed):
    """The strided views Vim's mixer passes: u, delta, z channels-last, B and C slices of one projection."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    rn = lambda *s: torch.randn(*s, generator=g, device="cuda")  # noqa: E731
    x_dbl = rn(batch, length, 24 + 2 * n).to(dtype)
    _, Bm, Cm = x_dbl.split([24, n, n], dim=-1)
    z = rn(batch, length, 2 * dim).to(dtype).transpose(1, 2).chunk(2, dim=1)[1]
    delta = (rn(batch, length, dim) * 0.5 - 2).to(dtype).transpose(1, 2)
    u = rn(batch, length, dim).to(dtype).transpose(1, 2)
    A = -torch.arange(1, n + 1, device="cuda", dtype=torch.float32).repeat(dim, 1)
    ins = [u, delta, A, Bm.transpose(1, 2), Cm.transpose(1, 2), rn(dim), z, rn(dim) * 0.5 - 0.5]
    return ins, True, rn(batch, length, dim).to(dtype).transpose(1, 2)


CONFIGS = sb.CANDIDATE_BWD_XLANE


def _with_tl_sum(fn, *args):
    """fn(*args) with the per-value tl.sum reductions (XLANE=False) instead of the reduce-scatter."""
    was = sb.XLANE
    sb.XLANE = False
    try:
        return fn(*args)
    finally:
        sb.XLANE = was


def _gpu_check(ins, sp, reverse, dout, dtype, monkeypatch, cfg):
    monkeypatch.setattr(ts, "_POISON", True)
    monkeypatch.setattr(sb, "BWD_XLANE_CONFIG", dict(cfg))
    got = sb.bwd(dout, *ins, sp, reverse)
    tl_sum = _with_tl_sum(sb.bwd, dout, *ins, sp, reverse)
    want = ref_grads(ins, sp, reverse, dout)
    tol = TOL[dtype]
    errs = rel_errs(got, want)
    assert all(e < tol for e in errs.values()), f"vs reference over {tol}: {errs}"
    # against the tl.sum reductions: same layouts and dtypes, values at the reference tolerance
    for name, x, y in zip(["du", "ddelta", "dA", "dB", "dC", "dD", "dz", "dbias"], got, tl_sum):
        assert x.shape == y.shape and x.dtype == y.dtype and x.stride() == y.stride(), name
    errs_sum = rel_errs(got, [None if w is None else o for w, o in zip(want, tl_sum)])
    assert all(e < tol for e in errs_sum.values()), f"vs XLANE=False over {tol}: {errs_sum}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype,opts,n", [(torch.float32, "Dzbs", 16), (torch.float32, "", 16),
                                          (torch.float32, "zb", 16), (torch.bfloat16, "Dzbs", 16),
                                          (torch.float16, "Dzbs", 16), (torch.float32, "Dzbs", 5),
                                          (torch.float32, "zs", 2), (torch.float32, "Ds", 32)])
def test_gpu_matches_reference_and_tl_sum(reverse, dtype, opts, n, monkeypatch):
    """The default config on the matrix of tests/ops/test_gpu_scan.py (plus dstate 5, 2, 32); dim 40: a
    partial channel block, length 65: a partial last chunk."""
    ins, sp, dout = make(2, 40, 65, n, opts, dtype, "cuda", seed=zlib.crc32(f"{reverse}{dtype}{opts}{n}".encode()))
    _gpu_check(ins, sp, reverse, dout, dtype, monkeypatch, sb.BWD_XLANE_CONFIG)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cfg", CONFIGS, ids=[str(c) for c in CONFIGS])
def test_gpu_candidates(cfg, monkeypatch):
    """Every candidate config: float32 with everything on (forwards, length 65, dstate 16 and 5) and Vim's
    channels-last bf16 views with packed B / C (reverse, lengths 197 and 98)."""
    for n, reverse in ((16, False), (5, True)):
        ins, sp, dout = make(2, 40, 65, n, "Dzbs", torch.float32, "cuda", seed=n)
        _gpu_check(ins, sp, reverse, dout, torch.float32, monkeypatch, cfg)
    for length in (197, 98):
        ins, sp, dout = vim_inputs(2, 96, length, 16, torch.bfloat16, seed=length)
        assert ts._bc_mode(ins[3], ins[4]) >= 1
        _gpu_check(ins, sp, True, dout, torch.bfloat16, monkeypatch, cfg)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_deterministic():
    ins, sp, dout = make(2, 40, 97, 16, "Dzbs", torch.float32, "cuda", seed=5)
    a, b = sb.bwd(dout, *ins, sp, True), sb.bwd(dout, *ins, sp, True)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cfg", CONFIGS, ids=[str(c) for c in CONFIGS])
def test_gpu_bidir_matches_reference_and_tl_sum(cfg, monkeypatch):
    """bwd_bidir against the float64 reference of both directions and against the same kernel with the tl.sum
    reductions (XLANE=False): same shapes, dtypes and strides, relative errors within the reference tolerances;
    float32 contiguous with dstate 5 and no z, bf16 channels-last with packed B / C at Vim's length."""
    monkeypatch.setattr(ts, "_POISON", True)
    monkeypatch.setattr(sb, "BWD_XLANE_CONFIG", dict(cfg))
    for (b, d, L, n), dtype, cl, with_z in (((2, 40, 65, 5), torch.float32, False, False),
                                          ((2, 96, 197, 16), torch.bfloat16, True, True)):
        ins, dout = bidir_inputs(b, d, L, n, dtype, "cuda", cl, with_z, seed=L)
        new = sb.bwd_bidir(dout, *ins, True, 0.5, True)
        tl_sum = _with_tl_sum(sb.bwd_bidir, dout, *ins, True, 0.5, True)
        errs = rel_errs(new, bidir_ref_grads(ins, dout, True, 0.5))
        assert all(e < TOL[dtype] for e in errs.values()), f"vs reference over {TOL[dtype]}: {errs}"
        for name, x, y in zip(["du", "ddelta", "dA", "dB", "dC", "dD", "dz", "dbias"], new, tl_sum):
            assert x.shape == y.shape and x.dtype == y.dtype, name
            if y.numel():
                assert x.stride() == y.stride(), name
                err = ((x.double() - y.double()).norm() / y.double().norm().clamp_min(1e-30)).item()
                assert err < TOL[dtype], (name, err)


def test_the_dispatch_point_calls_the_reduce_scatter_backward(monkeypatch):
    """scan._bwd / scan._bwd_bidir (what the custom ops and autograd functions call) hand every argument to
    scan_bwd.bwd / scan_bwd.bwd_bidir, registered when the package imports, and return their result."""
    assert ts._BWD == {"bwd": sb.bwd, "bwd_bidir": sb.bwd_bidir}
    calls = []
    monkeypatch.setitem(ts._BWD, "bwd", lambda *a: calls.append(("bwd", a)) or "x")
    monkeypatch.setitem(ts._BWD, "bwd_bidir", lambda *a: calls.append(("bwd_bidir", a)) or "xb")
    assert ts._bwd(*range(11)) == "x" and ts._bwd(*range(12)) == "x"  # a_is_log defaults to False
    assert ts._bwd_bidir(*range(19)) == "xb"
    assert calls == [("bwd", tuple(range(11)) + (False,)), ("bwd", tuple(range(12))), ("bwd_bidir", tuple(range(19)))]


def test_importing_scan_alone_registers_the_backward():
    """A process that imports only rmeeto.ops.triton.scan gets the backward too (the package's __init__ imports
    scan_bwd, which registers itself): scan.py cannot import scan_bwd without an import cycle."""
    code = ("import sys\n"
            "import rmeeto.ops.triton.scan as ts\n"
            "sb = sys.modules['rmeeto.ops.triton.scan_bwd']\n"
            "assert ts._BWD == {'bwd': sb.bwd, 'bwd_bidir': sb.bwd_bidir}, ts._BWD\n")
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src] + ([os.environ["PYTHONPATH"]] if os.environ.get(
        "PYTHONPATH") else [])))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

"""The conv+SiLU Triton kernels under Triton's interpreter (CPU): the current kernels (one forward and one
backward kernel for one or both directions) against the session-5 kernels they replaced (benchmarks/conv_v5.py,
the oracle: u and dx bit for bit, dw / db up to float32 summation order) and against autograd through the
PyTorch reference. Several backward tile configurations, including spans that are not a multiple of the
kernel's four-step chunks and many spans / channel blocks per sequence. Skipped where CUDA is available
(tests/ops/test_gpu_conv.py runs the compiled kernels there).

bf16 note: the interpreter truncates float32 -> bfloat16 instead of rounding, in the old and the new kernels
alike, so the bit-for-bit comparison with the oracle holds in bf16 too; against the reference bf16 is loose."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytestmark = [
    pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA machines test the compiled kernels instead"),
]
triton = pytest.importorskip("triton")

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")

# shared by the subprocess scripts: inputs with x a strided view (in_proj's half), as the mixer passes it
PRELUDE = """
import sys, torch
sys.path.insert(0, "benchmarks")
import conv_v5 as old
from rmeeto.ops import conv
from rmeeto.ops.triton import conv as tconv
torch.manual_seed(0)
bad = []

def inputs(L, K, D, dtype, bias=True):
    x = torch.randn(2, L, 2 * D)[..., :D].to(dtype)
    ws = [torch.randn(D, 1, K).to(dtype) for _ in range(2)]
    bs = [torch.randn(D).to(dtype) if bias else torch.zeros(D, dtype=dtype) for _ in range(2)]
    gs = [torch.randn(2, L, D).to(dtype) for _ in range(2)]
    return x, ws, bs, gs

def close(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-5)
"""


def run_interpreted(code: str) -> None:
    env = dict(os.environ, TRITON_INTERPRET="1")
    src = os.path.join(ROOT, "src")
    env["PYTHONPATH"] = os.pathsep.join([src] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    proc = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.full
def test_conv_kernels_equal_session5_kernels():
    """u (one direction and both) and dx bit for bit against the session-5 kernels, dw / db up to summation
    order, for each backward configuration given: lengths 1, 3, 13, 37 (one token; shorter than the taps;
    spans cut short by the end), 2-4 taps, channels not a multiple of the block, fp32 and bf16."""
    run_interpreted("""
        configs = [dict(SPAN=32, SEQS=1, BLOCK_D=128, num_warps=1, num_stages=1),  # one span and channel block
                   dict(SPAN=6, SEQS=1, BLOCK_D=16, num_warps=1, num_stages=1),  # spans of 6: chunks cut mid-span
                   dict(SPAN=8, SEQS=3, BLOCK_D=32, num_warps=1, num_stages=1)]  # a group past the batch
        cases = [(torch.float32, 37, 4, 40), (torch.float32, 1, 4, 24), (torch.float32, 13, 3, 24),
                 (torch.bfloat16, 37, 4, 40), (torch.bfloat16, 3, 2, 24)]
        for cfg in configs:
            tconv.BWD_CONFIG = tconv.BIDIR_BWD_CONFIG = cfg
            for dtype, L, K, D in cases:
                x, (wf, wb), (bf, bb), (gf, gb) = inputs(L, K, D, dtype)
                case = (cfg["SPAN"], str(dtype), L, K)
                for rev, w, b, g in ((False, wf, bf, gf), (True, wb, bb, gb)):
                    u = tconv._conv_silu_triton_fwd(x, w, b, rev)
                    if not torch.equal(u, old._conv_silu_triton_fwd(x, w, b, rev)):
                        bad.append(("u", rev, case))
                    new, ref = tconv._conv_silu_triton_bwd(x, w, b, g, rev), old._conv_silu_triton_bwd(x, w, b, g, rev)
                    if not torch.equal(new[0], ref[0]):
                        bad.append(("dx", rev, case))
                    if not all(close(a, r) for a, r in zip(new[1:], ref[1:])):
                        bad.append(("dw/db", rev, case))
                new = tconv._conv_silu_bidir_triton_fwd(x, wf, bf, wb, bb)
                if not all(torch.equal(a, r) for a, r in zip(new, old._conv_silu_bidir_triton_fwd(x, wf, bf, wb, bb))):
                    bad.append(("bidir u", case))
                new = tconv._conv_silu_bidir_triton_bwd(x, wf, bf, wb, bb, gf, gb)
                ref = old._conv_silu_bidir_triton_bwd(x, wf, bf, wb, bb, gf, gb)
                if not torch.equal(new[0], ref[0]):
                    bad.append(("bidir dx", case))
                if not all(close(a, r) for a, r in zip(new[1:], ref[1:])):
                    bad.append(("bidir dw/db", case))
        print("FAILURES", bad)
        sys.exit(1 if bad else 0)
    """)


def test_conv_kernels_against_reference():
    """Outputs and gradients (x, weight, bias) of the kernels, through their autograd functions, against
    autograd through the PyTorch reference: causal and anti-causal, one direction and both, with a bias and
    with a zero bias, odd lengths, fp32 (tight) and bf16 (one bf16 ulp of the largest value); short spans, so
    every sequence has several programs whose partial sums are reduced."""
    run_interpreted("""
        tconv.BWD_CONFIG = tconv.BIDIR_BWD_CONFIG = dict(SPAN=8, SEQS=1, BLOCK_D=32, num_warps=1, num_stages=1)
        for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
            for L, K, D, bias in ((19, 4, 40, True), (19, 4, 40, False), (5, 3, 24, True)):
                x, ws, bs, gs = inputs(L, K, D, dtype, bias)
                case = (str(dtype), L, K, bias)
                def check(name, got, want):
                    for i, (a, r) in enumerate(zip(got, want)):
                        a, r = a.float(), r.float()
                        if a.shape != r.shape or (a - r).abs().max() > tol * max(1.0, r.abs().max().item()):
                            bad.append((name, i, case))
                # the reference in float32 from the same (rounded) inputs
                leaves = [t.float().requires_grad_() for t in (x, ws[0], bs[0], ws[1], bs[1])]
                for rev in (False, True):
                    lv = [t.clone().requires_grad_() for t in (x, ws[rev], bs[rev])]
                    rl = [leaves[0], leaves[1 + 2 * rev], leaves[2 + 2 * rev]]
                    u = tconv.conv_silu_triton(*lv, rev)
                    ref = conv.conv_silu_torch(*rl, rev)
                    check(("single", rev), [u, *torch.autograd.grad(u, lv, gs[rev])],
                          [ref, *torch.autograd.grad(ref, rl, gs[rev].float())])
                lv = [t.clone().requires_grad_() for t in (x, ws[0], bs[0], ws[1], bs[1])]
                u = tconv.conv_silu_bidir_triton(*lv)
                ref = conv.conv_silu_bidir_torch(*leaves)
                check("bidir", [*u, *torch.autograd.grad(u, lv, gs)],
                      [*ref, *torch.autograd.grad(ref, leaves, [g.float() for g in gs])])
        print("FAILURES", bad)
        sys.exit(1 if bad else 0)
    """)


def test_forward_over_flat_rows_equals_tiles_per_sequence():
    """The forward tiled over the batch's flat rows (``FWD_FLAT``: a tile may hold the end of one sequence and the
    start of the next) gives the bits of the tiles per sequence, both directions, at lengths shorter than the taps,
    shorter than a tile and spanning several; the launcher takes the flat rows only where x's and the outputs'
    sequences lie one row stride apart (x in_proj's half or contiguous, not a slice of longer sequences)."""
    run_interpreted("""
        saved = dict(tconv.FWD_CONFIG)
        for block_l, block_d in ((16, 32), (8, 64)):
            tconv.FWD_CONFIG.update(BLOCK_L=block_l, BLOCK_D=block_d)
            for dtype, batch, L, K, D in ((torch.float32, 3, 13, 4, 40), (torch.float16, 2, 37, 4, 24),
                                          (torch.float32, 4, 2, 4, 24), (torch.float16, 1, 5, 3, 24)):
                x = torch.randn(batch, L, 2 * D)[..., :D].to(dtype)
                ws = [torch.randn(D, 1, K).to(dtype) for _ in range(2)]
                bs = [torch.randn(D).to(dtype) for _ in range(2)]
                case = (block_l, str(dtype), batch, L, K)
                tconv.FWD_FLAT = True
                flat = tconv._fwd_launch(x, ws[0], bs[0], ws[1], bs[1], True, True)
                grid, _, meta = tconv.fwd_spec(x, flat[0], K)
                if len(grid) != 2 or not meta.get("FLAT") or grid[0] != -(-batch * L // block_l):
                    bad.append(("flat grid", case, grid))
                tconv.FWD_FLAT = False
                per_seq = tconv._fwd_launch(x, ws[0], bs[0], ws[1], bs[1], True, True)
                if not all(torch.equal(a, b) for a, b in zip(flat, per_seq)):
                    bad.append(("bits", case))
                if not all(torch.equal(a, b) for a, b in zip(flat, old._conv_silu_bidir_triton_fwd(x, ws[0], bs[0],
                                                                                                     ws[1], bs[1]))):
                    bad.append(("session 5", case))
                # a slice of longer sequences: the launcher keeps the tiles per sequence (and their bits)
                tconv.FWD_FLAT = True
                xs = torch.randn(batch, L + 3, D).to(dtype)[:, :L]
                xs.copy_(x)
                if batch > 1 and "FLAT" in tconv.fwd_spec(xs, flat[0], K)[2]:
                    bad.append(("flat over a slice", case))
                if not all(torch.equal(a, b) for a, b in zip(tconv._fwd_launch(xs, ws[0], bs[0], ws[1], bs[1],
                                                                                True, True), flat)):
                    bad.append(("slice bits", case))
        tconv.FWD_CONFIG.clear()
        tconv.FWD_CONFIG.update(saved)
        print("FAILURES", bad)
        sys.exit(1 if bad else 0)
    """)

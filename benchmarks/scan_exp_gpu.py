"""The scan forward with part of its exp2 on the FMA units: does moving the discretisation's exponentials off the
special-function units (16 results per clock per SM on Hopper, against 128 FMAs) shorten the scan?

    PYTHONPATH=src python3 benchmarks/scan_exp_gpu.py --variant {mufu,poly_odd,poly_all} [--dims 384,768]
        [--lengths 197,76] [-- BENCH ARGS...]

``mufu``: the shipped step (tl.exp2 on both state halves). ``poly_odd``: the odd half of the states' exp(dt A)
through a degree-5 polynomial of 2^f on [-0.5, 0.5] with the exponent added to the float's bits (relative error
2.2e-7, as ex2.approx's); ``poly_all``: both halves. The variant replaces ``rmeeto.ops.triton.scan._advance``
before anything compiles, so run each variant in its own process. Times the two-direction forward launcher
(benchmarks/tuned_bench.py's inputs, seeded, batch 128) in a CUDA graph. ``mufu`` saves its outputs under ``--ref``;
the other variants print their largest difference from them. With ``--`` then runs ``rmeeto bench`` with the
variant in place."""

import argparse
import sys

import torch
import triton
import triton.language as tl
import triton.testing

from rmeeto.ops.triton import scan as ts
from _match_set import split_command
from tuned_bench import bidir_inputs


@triton.jit
def _exp2_poly(x):
    """2^x for x <= 0 on the FMA and integer units: x = i + f (i the nearest integer, |f| <= 0.5), 2^f by a
    degree-5 polynomial, i added to the exponent bits; below -126 clamped (2^-126, where ex2.approx.ftz gives 0)."""
    x = tl.maximum(x, -126.0)
    t = x + 12582912.0  # 1.5 * 2^23: the nearest integer to x lands in the low mantissa bits
    i = t.to(tl.int32, bitcast=True) - 0x4B400000
    f = x - (t - 12582912.0)
    p = 0.0013266970636323094
    p = p * f + 0.009675459936261177
    p = p * f + 0.05550742521882057
    p = p * f + 0.24022121727466583
    p = p * f + 0.6931469440460205
    p = p * f + 1.0000001192092896
    return (p.to(tl.int32, bitcast=True) + (i << 23)).to(tl.float32, bitcast=True)


@triton.jit
def _advance_poly_odd(he, ho, A2e, A2o, dt_j, dtu_j, Be, Bo):
    he = tl.exp2(dt_j * A2e) * he + Be[:, None] * dtu_j
    ho = _exp2_poly(dt_j * A2o) * ho + Bo[:, None] * dtu_j
    return he, ho


@triton.jit
def _advance_poly_all(he, ho, A2e, A2o, dt_j, dtu_j, Be, Bo):
    he = _exp2_poly(dt_j * A2e) * he + Be[:, None] * dtu_j
    ho = _exp2_poly(dt_j * A2o) * ho + Bo[:, None] * dtu_j
    return he, ho


VARIANTS = {"mufu": None, "poly_odd": _advance_poly_odd, "poly_all": _advance_poly_all}


def main():
    own, rest = split_command()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    ap.add_argument("--dims", default="384,768")
    ap.add_argument("--lengths", default="197,76")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--ref", default="/tmp/scan_exp_ref")
    a = ap.parse_args(own)
    if VARIANTS[a.variant] is not None:
        ts._advance = VARIANTS[a.variant]
    for dim in map(int, a.dims.split(",")) if a.dims else ():
        for L in map(int, a.lengths.split(",")):
            torch.manual_seed(0)
            args = bidir_inputs(a.batch, dim, L)
            out = ts._fwd_bidir(*args).float()
            path = f"{a.ref}_{dim}_{L}.pt"
            if a.variant == "mufu":
                torch.save(out.cpu(), path)
                diff = 0.0
            else:
                diff = (out.cpu() - torch.load(path)).abs().max().item()
            t = triton.testing.do_bench_cudagraph(lambda: ts._fwd_bidir(*args), rep=200, return_mode="median")
            print(f"{a.variant:8s} dim {dim:4d} batch {a.batch} L {L:3d}: {1e3 * t:7.1f} us  max diff from mufu "
                  f"{diff:.3g} (output abs max {out.abs().max().item():.3g})", flush=True)
    if rest:
        from rmeeto.cli import main as cli_main
        return cli_main(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())

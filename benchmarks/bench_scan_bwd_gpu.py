"""Time the selective-scan backward alone (``scan_bwd.bwd``, what ``scan._bwd`` calls): every
CANDIDATE_BWD_XLANE config of the reduce-scatter against the same kernel with the per-value tl.sum reductions
(XLANE=False, BWD_XLANE_CONFIG: the comparison row), at Vim-S shapes, in one run; then the two-direction
launcher (``scan_bwd.bwd_bidir``, what a Vim mixer calls) the same way, unless --no-bidir. Each config compiles
once per kernel (~10-20 s each the first time).

    PYTHONPATH=src python benchmarks/bench_scan_bwd_gpu.py [--batch 128] [--dim 768] [--lengths 197,98]
                                                       [--configs 0,1,3] [--no-bidir]

Inputs are what Vim's mixer hands one scan direction: u, delta, z [batch, dim, L] bf16 channels-last views of
[batch, L, dim] tensors, B and C transposed slices of one [batch, L, r + 2n] projection (read as packed
pairs), A [dim, 16], D and delta_bias float32, softplus on; dout channels-last bf16. Times are medians of
triton.testing.do_bench (CUDA events) in milliseconds, the whole launcher (kernel + partial sums). Before
timing, each config's gradients are compared with the comparison row's (relative norm error, max over the
eight outputs). With $OUT set, the results are also written to $OUT/bench_scan_bwd.json.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import triton
import triton.testing

from rmeeto.ops.triton import scan_bwd as sb


def vim_inputs(batch, dim, length, n, dtype):
    g = torch.Generator(device="cuda").manual_seed(0)
    rn = lambda *s: torch.randn(*s, generator=g, device="cuda")  # noqa: E731
    x_dbl = rn(batch, length, 24 + 2 * n).to(dtype)
    _, Bm, Cm = x_dbl.split([24, n, n], dim=-1)
    z = rn(batch, length, 2 * dim).to(dtype).transpose(1, 2).chunk(2, dim=1)[1]
    delta = (rn(batch, length, dim) * 0.5 - 2).to(dtype).transpose(1, 2)
    u = rn(batch, length, dim).to(dtype).transpose(1, 2)
    A = -torch.arange(1, n + 1, device="cuda", dtype=torch.float32).repeat(dim, 1)
    D, bias = rn(dim), rn(dim) * 0.5 - 0.5
    dout = rn(batch, length, dim).to(dtype).transpose(1, 2)
    return dout, [u, delta, A, Bm.transpose(1, 2), Cm.transpose(1, 2), D, z, bias]


def max_rel_err(got, want) -> float:
    errs = []
    for x, y in zip(got, want):
        if y.numel() == 0:
            continue
        x, y = x.double(), y.double()
        errs.append(((x - y).norm() / y.norm().clamp_min(1e-30)).item())
    return max(errs)


def time_configs(fn, args, cfgs, label) -> list:
    """(kernel, config, ms, error against the first row) of fn(*args) under every (XLANE, config) of cfgs, the
    first being the comparison row (a config that fails is reported and left out); sb.XLANE and
    sb.BWD_XLANE_CONFIG are restored afterwards."""
    default = dict(sb.BWD_XLANE_CONFIG)
    rows, ref = [], None
    try:
        for xlane, cfg in cfgs:
            sb.XLANE, sb.BWD_XLANE_CONFIG = xlane, dict(cfg)
            try:
                got = fn(*args)
                ref = got if ref is None else ref
                err = max_rel_err(got, ref)
                t = triton.testing.do_bench(lambda: fn(*args), warmup=25, rep=100, return_mode="median")
            except Exception as e:  # e.g. out of resources
                print(f"  {label} xlane={xlane} {cfg}: failed ({type(e).__name__}: {str(e)[:100]})")
                continue
            rows.append((f"{label}{'' if xlane else ' (XLANE=False)'}", cfg, t, err))
    finally:
        sb.XLANE, sb.BWD_XLANE_CONFIG = True, default
    return rows


def bench_bidir(a, L, cfgs) -> list:
    """The same comparison for the two-direction launcher: both directions' own inputs (the backward
    direction's from another projection), one shared z, A given as A_log, scale 1."""
    (dout_f, f), (dout_b, r) = (vim_inputs(a.batch, a.dim, L, a.dstate, torch.bfloat16) for _ in range(2))
    # one [2, batch, L, dim] gradient, channels-last per direction, as the mixer's output gives it
    dout = torch.stack([dout_f.transpose(1, 2), dout_b.transpose(1, 2)]).transpose(2, 3)
    for x in (f, r):
        x[2] = torch.log(-x[2])  # A_log
    args = (dout, *(t for pair in zip(f[:6], r[:6]) for t in pair), f[6], f[7], r[7], True, 1.0, True)
    rows = time_configs(sb.bwd_bidir, args, cfgs, "scan_bwd.bwd_bidir")
    print(f"\n  both directions, L {L}")
    print_rows(rows)
    del dout, f, r
    torch.cuda.empty_cache()
    return [{"L": L, "kernel": name, "config": cfg, "ms": t, "err_vs_tl_sum": err} for name, cfg, t, err in rows]


def print_rows(rows):
    if not rows:
        return
    base = rows[0][2]
    print(f"  {'kernel':<40}{'config':<84}{'ms':>8}{'x tl.sum':>10}{'err vs tl.sum':>15}")
    for name, cfg, t, err in rows:
        print(f"  {name:<40}{str(cfg):<84}{t:>8.3f}{base / t:>10.2f}{err:>15.1e}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--dstate", type=int, default=16)
    p.add_argument("--lengths", default="197,98", help="comma-separated sequence lengths (98: a merged length)")
    p.add_argument("--no-bidir", dest="bidir", action="store_false", help="skip the two-direction launchers")
    p.add_argument("--configs", default=None,
                   help="indices into CANDIDATE_BWD_XLANE to time (default: all); the XLANE=False row always runs")
    a = p.parse_args()
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}")
    results = {"device": torch.cuda.get_device_name(), "rows": []}
    # the comparison row first: the same body with tl.sum reductions, at the default config
    cfgs = [(False, dict(sb.BWD_XLANE_CONFIG))]
    if a.configs is None:
        cfgs += [(True, c) for c in sb.CANDIDATE_BWD_XLANE]
    else:  # a subset, to keep one device call short (each config compiles for ~10 s)
        cfgs += [(True, sb.CANDIDATE_BWD_XLANE[int(i)]) for i in a.configs.split(",")]
    for L in (int(x) for x in a.lengths.split(",")):
        dout, ins = vim_inputs(a.batch, a.dim, L, a.dstate, torch.bfloat16)
        args = (dout, *ins, True, False)
        print(f"\nbatch {a.batch}, dim {a.dim}, dstate {a.dstate}, L {L}, bf16 channels-last, D + z + bias + softplus")
        rows = time_configs(sb.bwd, args, cfgs, "scan_bwd.bwd")
        print_rows(rows)
        results["rows"] += [{"L": L, "kernel": name, "config": cfg, "ms": t, "err_vs_tl_sum": err}
                            for name, cfg, t, err in rows]
        del dout, ins
        torch.cuda.empty_cache()
        if a.bidir:
            results["rows"] += bench_bidir(a, L, cfgs)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "bench_scan_bwd.json"), "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()

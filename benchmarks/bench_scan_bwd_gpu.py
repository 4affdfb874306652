"""Time the selective-scan backward alone: the existing kernel (``scan._bwd``, its BWD_CONFIG and candidates)
against the reduce-scatter one (``scan_bwd.bwd``, every CANDIDATE_BWD_XLANE config, and its XLANE=False
twin), at Vim-S shapes, in one run; then the two-direction launchers (``scan._bwd_bidir`` against
``scan_bwd.bwd_bidir``, what a Vim mixer calls), unless --no-bidir. The old kernels run their BWD_CONFIG
(--sweep-old: every CANDIDATE_BWD too). Each config compiles once per kernel (~10-20 s each the first time).

    PYTHONPATH=src python benchmarks/bench_scan_bwd_gpu.py [--batch 128] [--dim 768] [--lengths 197,98]
                                                       [--sweep-old] [--no-bidir]

Inputs are what Vim's mixer hands one scan direction: u, delta, z [batch, dim, L] bf16 channels-last views of
[batch, L, dim] tensors, B and C transposed slices of one [batch, L, r + 2n] projection (read as packed
pairs), A [dim, 16], D and delta_bias float32, softplus on; dout channels-last bf16. Times are medians of
triton.testing.do_bench (CUDA events) in milliseconds, the whole launcher (kernel + partial sums). Before
timing, each new config's gradients are compared with the old kernel's (relative norm error, max over the
eight outputs). With $OUT set, the results are also written to $OUT/bench_scan_bwd.json.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import triton
import triton.testing

from rmeeto.ops.triton import scan as ts
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


def bench_bidir(a, L, old_cfgs, new_cfgs) -> list:
    """The same comparison for the two-direction launchers: both directions' own inputs (the backward
    direction's from another projection), one shared z, A given as A_log, scale 1."""
    (dout_f, f), (dout_b, r) = (vim_inputs(a.batch, a.dim, L, a.dstate, torch.bfloat16) for _ in range(2))
    # one [2, batch, L, dim] gradient, channels-last per direction, as the mixer's output gives it
    dout = torch.stack([dout_f.transpose(1, 2), dout_b.transpose(1, 2)]).transpose(2, 3)
    for x in (f, r):
        x[2] = torch.log(-x[2])  # A_log
    args = (dout, *(t for pair in zip(f[:6], r[:6]) for t in pair), f[6], f[7], r[7], True, 1.0, True)
    old_default, new_default = dict(ts.BWD_CONFIG), dict(sb.BWD_XLANE_CONFIG)
    ref = ts._bwd_bidir_classic(*args)
    rows = []
    for cfg in old_cfgs:
        ts.BWD_CONFIG = dict(cfg)
        try:
            t = triton.testing.do_bench(lambda: ts._bwd_bidir_classic(*args), warmup=25, rep=100, return_mode="median")
        except Exception as e:
            print(f"  bidir old {cfg}: failed ({type(e).__name__}: {str(e)[:100]})")
            continue
        rows.append(("old scan._bwd_bidir", cfg, t, 0.0))
    for xlane, cfg in new_cfgs:
        sb.XLANE, sb.BWD_XLANE_CONFIG = xlane, dict(cfg)
        try:
            err = max_rel_err(sb.bwd_bidir(*args), ref)
            t = triton.testing.do_bench(lambda: sb.bwd_bidir(*args), warmup=25, rep=100, return_mode="median")
        except Exception as e:
            print(f"  bidir new xlane={xlane} {cfg}: failed ({type(e).__name__}: {str(e)[:100]})")
            continue
        rows.append((f"new scan_bwd.bwd_bidir{'' if xlane else ' (XLANE=False)'}", cfg, t, err))
    ts.BWD_CONFIG, sb.XLANE, sb.BWD_XLANE_CONFIG = old_default, True, new_default
    print(f"\n  both directions, L {L}")
    print_rows(rows)
    del dout, f, r, ref
    torch.cuda.empty_cache()
    return [{"L": L, "kernel": name, "config": cfg, "ms": t, "err_vs_old": err} for name, cfg, t, err in rows]


def print_rows(rows):
    base = rows[0][2]
    print(f"  {'kernel':<40}{'config':<84}{'ms':>8}{'x old':>8}{'err vs old':>12}")
    for name, cfg, t, err in rows:
        print(f"  {name:<40}{str(cfg):<84}{t:>8.3f}{base / t:>8.2f}{err:>12.1e}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--dstate", type=int, default=16)
    p.add_argument("--lengths", default="197,98", help="comma-separated sequence lengths (98: a merged length)")
    p.add_argument("--sweep-old", action="store_true", help="also time the old kernel's other CANDIDATE_BWD")
    p.add_argument("--no-bidir", dest="bidir", action="store_false", help="skip the two-direction launchers")
    p.add_argument("--configs", default=None,
                   help="indices into CANDIDATE_BWD_XLANE to time (default: all, and the XLANE=False twin)")
    a = p.parse_args()
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}")
    results = {"device": torch.cuda.get_device_name(), "rows": []}
    old_cfgs = [dict(ts.BWD_CONFIG)] + ([c for c in ts.CANDIDATE_BWD if c != ts.BWD_CONFIG] if a.sweep_old else [])
    if a.configs is None:
        new_cfgs = [(True, c) for c in sb.CANDIDATE_BWD_XLANE] + [(False, dict(sb.BWD_XLANE_CONFIG))]
    else:  # a subset, to keep one device call short (each config compiles for ~10 s)
        new_cfgs = [(True, sb.CANDIDATE_BWD_XLANE[int(i)]) for i in a.configs.split(",")]
    old_default, new_default = dict(ts.BWD_CONFIG), dict(sb.BWD_XLANE_CONFIG)
    for L in (int(x) for x in a.lengths.split(",")):
        dout, ins = vim_inputs(a.batch, a.dim, L, a.dstate, torch.bfloat16)
        args = (dout, *ins, True, False)
        print(f"\nbatch {a.batch}, dim {a.dim}, dstate {a.dstate}, L {L}, bf16 channels-last, D + z + bias + softplus")
        ts.BWD_CONFIG = old_default
        ref = ts._bwd_classic(*args)
        rows = []
        for cfg in old_cfgs:
            ts.BWD_CONFIG = dict(cfg)
            try:
                t = triton.testing.do_bench(lambda: ts._bwd_classic(*args), warmup=25, rep=100, return_mode="median")
            except Exception as e:  # e.g. out of resources
                print(f"  old {cfg}: failed ({type(e).__name__}: {str(e)[:100]})")
                continue
            rows.append(("old scan._bwd", cfg, t, 0.0))
        for xlane, cfg in new_cfgs:
            sb.XLANE, sb.BWD_XLANE_CONFIG = xlane, dict(cfg)
            try:
                err = max_rel_err(sb.bwd(*args), ref)
                t = triton.testing.do_bench(lambda: sb.bwd(*args), warmup=25, rep=100, return_mode="median")
            except Exception as e:
                print(f"  new xlane={xlane} {cfg}: failed ({type(e).__name__}: {str(e)[:100]})")
                continue
            rows.append((f"new scan_bwd.bwd{'' if xlane else ' (XLANE=False)'}", cfg, t, err))
        ts.BWD_CONFIG, sb.XLANE, sb.BWD_XLANE_CONFIG = old_default, True, new_default
        print_rows(rows)
        results["rows"] += [{"L": L, "kernel": name, "config": cfg, "ms": t, "err_vs_old": err}
                            for name, cfg, t, err in rows]
        del dout, ins, ref
        torch.cuda.empty_cache()
        if a.bidir:
            results["rows"] += bench_bidir(a, L, old_cfgs, new_cfgs)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "bench_scan_bwd.json"), "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()

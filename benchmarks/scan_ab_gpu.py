"""A/B timing of the two-direction scan forward (Vim's inference path) at Vim-S shapes, in one process: this tree's
kernel with its shipped tile (`FWD_CONFIG`) and with that tile's prefetch flipped, and, given ``--old FILE``, the
forward launcher of another copy of ``rmeeto/ops/triton/scan.py`` (e.g. the previous commit's, from
``git show HEAD~1:src/rmeeto/ops/triton/scan.py > old_scan.py``).

    PYTHONPATH=src python benchmarks/scan_ab_gpu.py [--old old_scan.py] [--batch 128] [--lengths 197,98]
        [--dtype fp16] [--once VARIANT]

Inputs are laid out as Vim's mixer hands them over (channels-last views; B / C slices of x_proj's output).
Times are medians of CUDA-graph replays (`triton.testing.do_bench_cudagraph`), in microseconds; the first
column is each variant's bits compared with this tree's default. ``--once VARIANT`` runs one variant a few
times and exits (for `ncu --kernel-name`).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

import torch
import triton.testing

from rmeeto.ops.triton import scan as ts


def make(batch, dim, L, n, dtype, g):
    rn = lambda *s: torch.randn(*s, generator=g, device="cuda")  # noqa: E731
    out = {}
    for d in ("f", "b"):
        x_dbl = rn(batch, L, 24 + 2 * n).to(dtype)
        _, Bm, Cm = x_dbl.split([24, n, n], dim=-1)
        out["B" + d], out["C" + d] = Bm.transpose(1, 2), Cm.transpose(1, 2)
        out["dt" + d] = (rn(batch, L, dim) * 0.5 - 2).to(dtype).transpose(1, 2)
        out["u" + d] = rn(batch, L, dim).to(dtype).transpose(1, 2)
        out["A" + d] = torch.log(torch.arange(1, n + 1, device="cuda", dtype=torch.float32)).repeat(dim, 1)
        out["D" + d] = rn(dim)
        out["bias" + d] = rn(dim) * 0.5 - 0.5
    out["z"] = rn(batch, L, 2 * dim).to(dtype).transpose(1, 2).chunk(2, dim=1)[1]
    return out


def call(mod, t):
    return mod._fwd_bidir(t["uf"], t["ub"], t["dtf"], t["dtb"], t["Af"], t["Ab"], t["Bf"], t["Bb"], t["Cf"], t["Cb"],
                          t["Df"], t["Db"], t["z"], t["biasf"], t["biasb"], True, 0.5, True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", default=None)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--lengths", default="197,98")
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "bf16"])
    ap.add_argument("--once", default=None, help="run this variant (new, flipped, old) a few times and exit")
    a = ap.parse_args()
    dtype = torch.float16 if a.dtype == "fp16" else torch.bfloat16
    old = None
    if a.old:
        spec = importlib.util.spec_from_file_location("rmeeto_old_scan", a.old)
        old = importlib.util.module_from_spec(spec)
        sys.modules["rmeeto_old_scan"] = old
        spec.loader.exec_module(old)
    shipped = dict(ts.FWD_CONFIG)
    flipped = dict(shipped, prefetch=not shipped.get("prefetch", False))
    variants = {"new": (ts, shipped), "flipped": (ts, flipped)}
    if old is not None:
        variants["old"] = (old, dict(old.FWD_CONFIG))
    g = torch.Generator(device="cuda").manual_seed(0)
    print(f"# {torch.cuda.get_device_name()}, batch {a.batch}, {a.dim} channels, {a.dtype}; bidirectional scan "
          f"forward, us (CUDA-graph replays)", flush=True)
    for L in (int(x) for x in a.lengths.split(",")):
        t = make(a.batch, a.dim, L, 16, dtype, g)
        if a.once:
            mod, cfg = variants[a.once]
            mod.FWD_CONFIG = cfg
            for _ in range(3):
                call(mod, t)
            torch.cuda.synchronize()
            return
        ts.FWD_CONFIG = shipped
        want = call(ts, t)
        for name, (mod, cfg) in variants.items():
            mod.FWD_CONFIG = cfg
            got = call(mod, t)
            same = torch.equal(got, want)
            err = ((got.float() - want.float()).norm() / want.float().norm()).item()
            us = [triton.testing.do_bench_cudagraph(lambda: call(mod, t), rep=200) * 1e3 for _ in range(3)]
            print(f"L={L:4d} {name:<8} {str(cfg):<62} bits equal to new: {str(same):<5} rel err {err:.2e}  "
                  f"us: {' '.join(f'{x:7.1f}' for x in us)}", flush=True)


if __name__ == "__main__":
    main()

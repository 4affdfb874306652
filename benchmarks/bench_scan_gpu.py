"""Time the selective-scan backends on Vim-S shapes (one scan direction of one mixer); the official
mamba_ssm kernel too when it is importable (contiguous layout, its own).

    PYTHONPATH=src python benchmarks/bench_scan_gpu.py [--batch 128] [--dim 768] [--length 197] [--no-sweep]

Shapes: u, delta, z [batch, dim, length] bf16; A [dim, 16]; B, C [batch, 16, length] bf16; D, delta_bias fp32;
softplus on. Times are medians of triton.testing.do_bench (CUDA events), in milliseconds. The Triton tile
configs are swept first (the forward's CANDIDATE_FWD and the backward's scan_bwd.CANDIDATE_BWD_XLANE separately)
and the best is used in the table.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import triton
import triton.testing

from rmeeto.ops.triton import scan as triton_scan
from rmeeto.ops.triton import scan_bwd as triton_scan_bwd
from rmeeto.ops.selective_scan import selective_scan_chunked, selective_scan_ref



def make(batch, dim, length, n, dtype, layout):
    g = torch.Generator(device="cuda").manual_seed(0)
    rn = lambda *s: torch.randn(*s, generator=g, device="cuda")  # noqa: E731
    A = -torch.arange(1, n + 1, device="cuda", dtype=torch.float32).repeat(dim, 1)
    D = rn(dim)
    bias = rn(dim) * 0.5 - 0.5
    if layout == "vim":  # the strided views Vim's mixer passes (see rmeeto.models.vim.BiMambaMixer.branch)
        x_dbl = rn(batch, length, 24 + 2 * n).to(dtype)
        _, Bm, Cm = x_dbl.split([24, n, n], dim=-1)
        B, C = Bm.transpose(1, 2), Cm.transpose(1, 2)
        delta = (rn(batch, length, dim) * 0.5 - 2).to(dtype).transpose(1, 2)
        z = rn(batch, length, 2 * dim).to(dtype).transpose(1, 2).chunk(2, dim=1)[1]
        u = rn(batch, length, dim).to(dtype).transpose(1, 2)  # the conv's channels-last output
    else:
        B, C = rn(batch, n, length).to(dtype), rn(batch, n, length).to(dtype)
        delta = (rn(batch, dim, length) * 0.5 - 2).to(dtype)
        z = rn(batch, dim, length).to(dtype)
        u = rn(batch, dim, length).to(dtype)
    return [u, delta, A, B, C, D, z, bias]


def bench(fn, slow=False, grad_to_none=None):
    kw = dict(warmup=5, rep=30) if slow else dict(warmup=25, rep=100)
    return triton.testing.do_bench(fn, grad_to_none=grad_to_none, return_mode="median", **kw)


def fwd_fn(scan, inputs):
    def f():
        with torch.no_grad():
            scan(*inputs, delta_softplus=True)
    return f


def fwdbwd_fn(scan, leaves, gout):
    def f():
        scan(*leaves, delta_softplus=True).backward(gout)
    return f


def sweep(label, module, attr, candidates, fn, note=""):
    """Time fn under every tile config in candidates (set as module.<attr>), keep the fastest there and return
    (ms, config)."""
    best = None
    for cfg in candidates:
        setattr(module, attr, dict(cfg))
        try:
            t = bench(fn)
        except Exception as e:  # e.g. out of resources
            print(f"  {label} config {cfg}: failed ({type(e).__name__}: {str(e)[:100]})")
            continue
        print(f"  {label} config {cfg}: {t:.3f} ms{note}")
        if best is None or t < best[0]:
            best = (t, cfg)
    setattr(module, attr, dict(best[1]))
    return best


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--length", type=int, default=197)
    p.add_argument("--dstate", type=int, default=16)
    p.add_argument("--no-sweep", action="store_true")
    p.add_argument("--skip-slow", action="store_true", help="skip the reference backend")
    args = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    dtype = torch.bfloat16
    b, d, L, n = args.batch, args.dim, args.length, args.dstate
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}")
    print(f"shapes: batch {b}, dim {d}, dstate {n}, length {L}, {dtype} inputs, D + z + delta_bias + softplus")
    elems = b * d * L
    # floor estimates: bytes of u, delta, z in + out (2 B each) fwd; bwd reads u, delta, z, dout, writes 3 grads
    print(f"  fwd min bytes {elems * 2 * 4 / 1e6:.0f} MB; bwd min bytes {elems * 2 * 7 / 1e6:.0f} MB; "
          f"state updates {elems * n / 1e6:.0f} M (one exp each)")

    inputs = make(b, d, L, n, dtype, "contig")
    results = {}

    # ---- sanity: triton vs chunked at full size (fp32 math in both; bf16 output rounding dominates)
    with torch.no_grad():
        o_t = triton_scan.selective_scan_triton(*inputs, delta_softplus=True)
        o_c = selective_scan_chunked(*inputs, delta_softplus=True)
    err = ((o_t.float() - o_c.float()).norm() / o_c.float().norm()).item()
    print(f"  full-size check: ||triton - chunked|| / ||chunked|| = {err:.2e}")
    del o_t, o_c

    # ---- config sweep, on the layout the model hands the kernels (channels-last views)
    inputs_vim = make(b, d, L, n, dtype, "vim")
    gout_vim = torch.randn(b, L, d, device="cuda").to(dtype).transpose(1, 2)
    if not args.no_sweep:
        results["fwd_best_config"] = sweep(
            "fwd", triton_scan, "FWD_CONFIG", triton_scan.CANDIDATE_FWD,
            fwd_fn(triton_scan.selective_scan_triton, inputs_vim))
        results["bwd_best_config"] = sweep(
            "bwd", triton_scan_bwd, "BWD_XLANE_CONFIG", triton_scan_bwd.CANDIDATE_BWD_XLANE,
            lambda: torch.ops.rmeeto.selective_scan_bwd(gout_vim, *inputs_vim, True, False, False), " (backward op alone)")
    print(f"  using FWD_CONFIG={triton_scan.FWD_CONFIG} BWD_XLANE_CONFIG={triton_scan_bwd.BWD_XLANE_CONFIG}")

    # ---- table
    rows = []
    gout = torch.randn(b, d, L, device="cuda").to(dtype)
    backends = [("triton", triton_scan.selective_scan_triton, False), ("chunked", selective_scan_chunked, True)]
    if not args.skip_slow:
        backends.append(("reference", selective_scan_ref, True))
    try:  # the official CUDA kernel, when mamba_ssm is importable (benchmarks/build_mamba_ssm.sh)
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        backends.insert(1, ("mamba_ssm", selective_scan_fn, False))
    except ImportError:
        print("  mamba_ssm not importable: no official-kernel row")
    for layout in ("contig", "vim"):
        ins = inputs if layout == "contig" else inputs_vim
        go = gout if layout == "contig" else gout_vim
        for name, scan, slow in backends:
            if layout == "vim" and name != "triton":
                continue
            leaves = [t.detach().requires_grad_() for t in ins]  # keeps the (strided) layout
            t_f = bench(fwd_fn(scan, ins), slow=slow)
            t_fb = bench(fwdbwd_fn(scan, leaves, go), slow=slow, grad_to_none=leaves)
            rows.append((f"{name} ({layout})", t_f, t_fb))
            torch.cuda.empty_cache()
    tr = rows[0]
    print()
    print(f"{'backend':<22}{'fwd ms':>10}{'fwd+bwd ms':>12}{'fwd x':>10}{'f+b x':>10}   (x = time / time of triton (contig))")
    for name, t_f, t_fb in rows:
        print(f"{name:<22}{t_f:>10.3f}{t_fb:>12.3f}{t_f / tr[1]:>10.1f}{t_fb / tr[2]:>10.1f}")
    results["rows"] = rows
    results["device"] = torch.cuda.get_device_name()
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "bench.json"), "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()

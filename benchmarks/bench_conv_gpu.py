"""Time the fused conv+SiLU kernels at Vim-S shapes (batch 128, 197 tokens, 768 channels, bf16, the
channels-last slice of in_proj's output): forward, the backward kernel for each tile candidate, and PyTorch's
conv backward (autograd through the reference) for comparison. Median ms of triton.testing.do_bench.

    PYTHONPATH=src python benchmarks/bench_conv_gpu.py [--batch 128] [--length 197] [--dim 768]
"""

import argparse

import torch
import triton.testing

from rmeeto.ops import conv
from rmeeto.ops.triton import conv as tconv


def main(argv=None):
    """Prints the table; leaves the fastest backward tiles in ``rmeeto.ops.triton.conv.BWD_CONFIG`` (returned)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--length", type=int, default=197)
    ap.add_argument("--dim", type=int, default=768)
    args = ap.parse_args(argv)
    b, L, d = args.batch, args.length, args.dim
    xz = torch.randn(b, L, 2 * d, device="cuda", dtype=torch.bfloat16)
    x = xz[..., :d]
    w = torch.randn(d, 1, 4, device="cuda", dtype=torch.bfloat16) * 0.5
    bias = torch.randn(d, device="cuda", dtype=torch.bfloat16)
    g = torch.randn(b, L, d, device="cuda", dtype=torch.bfloat16)
    bench = lambda f: triton.testing.do_bench(f, warmup=25, rep=100, return_mode="median")  # noqa: E731
    print(f"{torch.cuda.get_device_name()}: batch {b}, length {L}, dim {d}, bf16")
    print(f"  forward (triton)                      {bench(lambda: tconv._conv_silu_triton_fwd(x, w, bias, False)):.3f} ms")
    ref_dx = None
    best = (float("inf"), None)
    for cfg in tconv.CANDIDATE_BWD:
        tconv.BWD_CONFIG = cfg
        dx, dw, db = tconv._conv_silu_triton_bwd(x, w, bias, g, False)
        if ref_dx is None:
            xs, ws, bs = (t.detach().float().requires_grad_() for t in (x, w, bias))
            ref_dx, ref_dw, ref_db = torch.autograd.grad(conv.conv_silu_torch(xs, ws, bs), [xs, ws, bs], g.float())
        err = max(((a.float() - r).norm() / r.norm()).item() for a, r in ((dx, ref_dx), (dw, ref_dw), (db, ref_db)))
        t = bench(lambda: tconv._conv_silu_triton_bwd(x, w, bias, g, False))
        print(f"  backward {cfg}: {t:.3f} ms (rel err {err:.1e})")
        best = min(best, (t, cfg), key=lambda p: p[0])
    tconv.BWD_CONFIG = best[1]
    print(f"  fastest backward tiles: {best[1]}")
    xs, ws, bs = (t.detach().requires_grad_() for t in (x, w, bias))

    def torch_bwd():
        torch.autograd.grad(conv.conv_silu_torch(xs, ws, bs), [xs, ws, bs], g)
    print(f"  PyTorch conv forward + backward        {bench(torch_bwd):.3f} ms")
    return tconv.BWD_CONFIG


if __name__ == "__main__":
    main()

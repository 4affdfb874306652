"""Time the fused conv+SiLU kernels at Vim-S shapes (batch 128, 197 tokens, 768 channels, bf16, x the
channels-last half of in_proj's output), the session-5 kernels (benchmarks/conv_v5.py) beside the current ones
in one run: forward and backward, one direction and both (Vim's mixer), the backward for every tile candidate
in ``CANDIDATE_BWD``, and PyTorch's conv forward + backward for comparison. Each backward row also gives its
largest relative error against the float32 reference and whether its dx equals the session-5 dx bit for bit.
Median ms of triton.testing.do_bench (launcher and partial-sum reduction included).

    PYTHONPATH=src python benchmarks/bench_conv_gpu.py [--batch 128] [--length 197] [--dim 768]
"""

import argparse
import os
import sys

import torch
import triton.testing

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import conv_v5  # noqa: E402

from rmeeto.ops import conv  # noqa: E402
from rmeeto.ops.triton import conv as tconv  # noqa: E402


def main(argv=None):
    """Prints the table; leaves the fastest candidates in ``tconv.BWD_CONFIG`` / ``tconv.BIDIR_BWD_CONFIG``
    and returns them."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--length", type=int, default=197)
    ap.add_argument("--dim", type=int, default=768)
    args = ap.parse_args(argv)
    b, L, d = args.batch, args.length, args.dim
    torch.backends.cudnn.allow_tf32 = False
    xz = torch.randn(b, L, 2 * d, device="cuda", dtype=torch.bfloat16)
    x = xz[..., :d]
    w, wb = (torch.randn(d, 1, 4, device="cuda", dtype=torch.bfloat16) * 0.5 for _ in range(2))
    bias, bias_b = (torch.randn(d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    g, gb = (torch.randn(b, L, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    bench = lambda f: triton.testing.do_bench(f, warmup=25, rep=100, return_mode="median")  # noqa: E731
    print(f"{torch.cuda.get_device_name()}: batch {b}, length {L}, dim {d}, bf16 (ms, median)")

    print(f"  forward             session 5 {bench(lambda: conv_v5._conv_silu_triton_fwd(x, w, bias, False)):.3f}"
          f"   new {bench(lambda: tconv._conv_silu_triton_fwd(x, w, bias, False)):.3f}")
    print(f"  forward, both dirs  session 5 "
          f"{bench(lambda: conv_v5._conv_silu_bidir_triton_fwd(x, w, bias, wb, bias_b)):.3f}"
          f"   new {bench(lambda: tconv._conv_silu_bidir_triton_fwd(x, w, bias, wb, bias_b)):.3f}")

    # float32 references of the gradients
    leaves = [t.detach().float().requires_grad_() for t in (x, w, bias, wb, bias_b)]
    ref1 = torch.autograd.grad(conv.conv_silu_torch(*leaves[:3]), leaves[:3], g.float())
    ref2 = torch.autograd.grad(conv.conv_silu_bidir_torch(*leaves), leaves, [g.float(), gb.float()])

    def err(got, ref):
        return max(((a.float() - r).norm() / r.norm()).item() for a, r in zip(got, ref))

    old1 = conv_v5._conv_silu_triton_bwd(x, w, bias, g, False)
    old2 = conv_v5._conv_silu_bidir_triton_bwd(x, w, bias, wb, bias_b, g, gb)
    print(f"  backward            session 5 {conv_v5.BWD_CONFIG}: "
          f"{bench(lambda: conv_v5._conv_silu_triton_bwd(x, w, bias, g, False)):.3f} (rel err {err(old1, ref1):.1e})")
    print(f"  backward, both dirs session 5 {conv_v5.BWD_CONFIG}: "
          f"{bench(lambda: conv_v5._conv_silu_bidir_triton_bwd(x, w, bias, wb, bias_b, g, gb)):.3f} "
          f"(rel err {err(old2, ref2):.1e})")
    best1, best2 = (float("inf"), None), (float("inf"), None)
    for cfg in tconv.CANDIDATE_BWD:
        tconv.BWD_CONFIG = tconv.BIDIR_BWD_CONFIG = cfg
        new1 = tconv._conv_silu_triton_bwd(x, w, bias, g, False)
        t1 = bench(lambda: tconv._conv_silu_triton_bwd(x, w, bias, g, False))
        new2 = tconv._conv_silu_bidir_triton_bwd(x, w, bias, wb, bias_b, g, gb)
        t2 = bench(lambda: tconv._conv_silu_bidir_triton_bwd(x, w, bias, wb, bias_b, g, gb))
        print(f"  backward new {cfg}: one dir {t1:.3f} (rel err {err(new1, ref1):.1e}, dx == session 5: "
              f"{torch.equal(new1[0], old1[0])})   both dirs {t2:.3f} (rel err {err(new2, ref2):.1e}, dx == "
              f"session 5: {torch.equal(new2[0], old2[0])})")
        best1 = min(best1, (t1, cfg), key=lambda p: p[0])
        best2 = min(best2, (t2, cfg), key=lambda p: p[0])
    tconv.BWD_CONFIG, tconv.BIDIR_BWD_CONFIG = best1[1], best2[1]
    print(f"  fastest backward tiles: one direction {best1[1]} ({best1[0]:.3f}), both {best2[1]} ({best2[0]:.3f})")

    xs, ws, bs = (t.detach().requires_grad_() for t in (x, w, bias))

    def torch_bwd():
        torch.autograd.grad(conv.conv_silu_torch(xs, ws, bs), [xs, ws, bs], g)
    print(f"  PyTorch conv forward + backward        {bench(torch_bwd):.3f} ms")
    return tconv.BWD_CONFIG, tconv.BIDIR_BWD_CONFIG


if __name__ == "__main__":
    main()

"""Pick the scan forward tile (``CANDIDATE_FWD``) on this GPU at Vim-S inference shapes, then run ``rmeeto
bench`` in the same process with the fastest one, so the model numbers are those of the tile to commit.

    PYTHONPATH=src python benchmarks/tuned_bench.py [--batch 128] [--dim 768] [--length 197] -- BENCH ARGS...

Times the two-direction forward launcher (what a Vim mixer calls without gradients): u, delta, z fp16
channels-last views of [batch, L, dim] tensors, B and C transposed slices of one [batch, L, 2 x 16]
projection, A as A_log (float32), D and delta_bias float32, softplus on; medians of triton.testing.do_bench."""

import argparse
import sys

import torch
import triton.testing

from _match_set import split_command
from rmeeto.cli import main as cli_main
from rmeeto.ops.triton import scan as ts


def bidir_inputs(batch: int, dim: int, L: int, n: int = 16, dtype=torch.float16, device="cuda"):
    def cl():  # [batch, dim, L] view of a [batch, L, dim] tensor, as the mixer passes
        return torch.randn(batch, L, dim, device=device, dtype=dtype).transpose(1, 2)

    def bc():
        proj = torch.randn(batch, L, 2 * n, device=device, dtype=dtype)
        return proj[..., :n].transpose(1, 2), proj[..., n:].transpose(1, 2)

    (Bf, Cf), (Bb, Cb) = bc(), bc()
    f32 = dict(device=device, dtype=torch.float32)
    A = [torch.log(torch.arange(1, n + 1, **f32)).repeat(dim, 1) for _ in range(2)]
    return (cl(), cl(), cl() * 0.1, cl() * 0.1, A[0], A[1], Bf, Bb, Cf, Cb, torch.ones(dim, **f32),
            torch.ones(dim, **f32), cl(), torch.zeros(dim, **f32) - 2, torch.zeros(dim, **f32) - 2, True, 0.5, True)


def main(argv=None):
    own, rest = split_command(argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--length", type=int, default=197)
    a = ap.parse_args(own)
    args = bidir_inputs(a.batch, a.dim, a.length)
    shipped = dict(ts.FWD_CONFIG)
    ref, times = None, []
    for cfg in ts.CANDIDATE_FWD:
        ts.FWD_CONFIG = dict(cfg)
        out = ts._fwd_bidir(*args)
        ref = out if ref is None else ref
        same = torch.equal(out, ref)
        t = triton.testing.do_bench(lambda: ts._fwd_bidir(*args), warmup=25, rep=100, return_mode="median")
        times.append((t, dict(cfg)))
        print(f"scan fwd bidir {cfg}: {1e3 * t:.1f} us{'' if same else '  OUTPUT DIFFERS FROM THE FIRST CONFIG'}",
              flush=True)
    best_t, best = min(times, key=lambda x: x[0])
    ts.FWD_CONFIG = best
    shipped_t = [t for t, cfg in times if cfg == shipped]
    print(f"fastest: {best} ({1e3 * best_t:.1f} us; shipped {shipped}: "
          f"{(1e3 * shipped_t[0]) if shipped_t else float('nan'):.1f} us)", flush=True)
    if rest:
        return cli_main(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())

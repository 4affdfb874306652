"""The scan forward's tiles with fewer channels than lanes (several lanes share a channel's dstate, so a program's
C . h sums cross lanes) against the shipped one-channel-per-lane tile, at Vim-Ti / Vim-S widths: does more threads
per SM shorten a scan whose programs are chains over the tokens?

    PYTHONPATH=src python3 benchmarks/scan_lanes_gpu.py [--dims 384,768] [--batches 128,64] [--lengths 197,76]

Times the two-direction forward launcher (benchmarks/tuned_bench.py's inputs) in a CUDA graph
(triton.testing.do_bench_cudagraph, median), and each tile's largest difference from the shipped tile's output."""

import argparse

import torch
import triton.testing

from rmeeto.ops.triton import scan as ts
from tuned_bench import bidir_inputs

CONFIGS = [  # (BLOCK_D, CHUNK, num_warps, prefetch); the first is the shipped tile
    (64, 2, 2, True), (32, 2, 2, True), (16, 2, 1, True), (32, 2, 4, True), (64, 2, 4, True), (16, 2, 2, True),
    (8, 2, 1, True), (32, 1, 2, True), (16, 1, 1, True), (32, 2, 1, True),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", default="384,768")
    ap.add_argument("--batches", default="128,64")
    ap.add_argument("--lengths", default="197,76")
    a = ap.parse_args()
    print(torch.cuda.get_device_name(), flush=True)
    for dim in map(int, a.dims.split(",")):
        for batch in map(int, a.batches.split(",")):
            for L in map(int, a.lengths.split(",")):
                args = bidir_inputs(batch, dim, L)
                ref = None
                for bd, ch, nw, pf in CONFIGS:
                    ts.FWD_CONFIG = dict(BLOCK_D=bd, CHUNK=ch, num_warps=nw, prefetch=pf)
                    try:
                        out = ts._fwd_bidir(*args)
                        torch.cuda.synchronize()
                    except Exception as exc:  # a tile Triton cannot lay out
                        print(f"dim {dim} batch {batch} L {L} {ts.FWD_CONFIG}: failed: {str(exc)[:160]}", flush=True)
                        continue
                    ref = out if ref is None else ref
                    diff = (out.float() - ref.float()).abs().max().item()
                    t = triton.testing.do_bench_cudagraph(lambda: ts._fwd_bidir(*args), rep=100,
                                                          return_mode="median")
                    print(f"dim {dim:4d} batch {batch:3d} L {L:3d} tile {bd:3d} x {ch} in {nw} warps"
                          f"{' prefetch' if pf else ''}: {1e3 * t:7.1f} us  max diff {diff:.3g}", flush=True)


if __name__ == "__main__":
    main()

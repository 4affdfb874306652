"""Issue 11: sweep the best-partner kernel's tiles at the video shape, then time VideoMamba-S f8 (r=88) with the
default and with the fastest tiling in one process, so the ratio change is measured on one card in one run.

    PYTHONPATH=src python benchmarks/tune_partner_video.py [--reps 30]

Prints the sweep (benchmarks/bench_merge_gpu.py --partner-tiles) and then ``rmeeto bench
videomamba_small_patch16_224_f8 --batch-size 32 --modes cudagraph`` twice: PARTNER_CONFIG as shipped, then with
the long-sequence entry set to the fastest tiling found for the video shape."""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_merge_gpu  # noqa: E402

from rmeeto.cli import main as cli_main  # noqa: E402
from rmeeto.ops.triton import merge as mt  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=30)
    a = ap.parse_args()
    best = bench_merge_gpu.sweep_partner_tiles(a.reps)
    video = [tiles for name, tiles in best.items() if name.startswith("videomamba")]
    bench = ["bench", "videomamba_small_patch16_224_f8", "--batch-size", "32", "--modes", "cudagraph",
             "--warmup", "5", "--repeats", "10"]
    print(f"\n== video, PARTNER_CONFIG as shipped: {mt.PARTNER_CONFIG}", flush=True)
    _run(bench)
    if video and video[0] != mt.PARTNER_CONFIG["long"]:
        mt.PARTNER_CONFIG["long"] = video[0]
        print(f"\n== video, PARTNER_CONFIG['long'] = {video[0]} (fastest in the sweep)", flush=True)
        _run(bench)
    else:
        print("\n(the shipped long-sequence tiling is already the fastest, or no video shape was swept)")


def _run(argv):
    code = cli_main(argv)
    if code:
        print(f"bench exited with {code}")


if __name__ == "__main__":
    main()

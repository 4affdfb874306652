"""Both scan directions' x_proj and dt_proj: the four cuBLAS GEMMs against the one kernel of
``rmeeto.ops.triton.proj`` in several tilings, graphed time per call (one Vim block's worth) and its
bandwidth (u read, x_dbl and delta written), with each tiling's largest error against the exact product over its
bound for a float32 sum rounded once (<= 1: within it). "default" is the tiling the launcher picks.

    PYTHONPATH=src python3 benchmarks/bench_proj_gpu.py [--reps 30] [--sweep]

Shapes: Vim-Ti / S / B at batch 128, 197 tokens (unmerged) and 98 (late merged layers), fp16.
"""

from __future__ import annotations

import argparse
import itertools

import torch

from bench_merge_gpu import _event_ms, _graphed
from rmeeto.ops.proj import bidir_scan_inputs_torch
from rmeeto.ops.triton import proj as tp


def _err(got, a, b):
    """Largest |got - a @ b.T| over its bound for a float32 sum in any order rounded once (<= 1: within it)."""
    exact = a.double() @ b.double().T
    bound = a.shape[-1] * 2.0 ** -24 * (a.double().abs() @ b.double().abs().T)
    fi = torch.finfo(got.dtype)
    spacing = (got.double().abs() * fi.eps).clamp_min(fi.tiny * fi.eps)
    return ((got.double() - exact).abs() / (0.5 * spacing + bound)).max().item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--sweep", action="store_true", help="every tiling below, not just the default")
    ap.add_argument("--dims", default="384,768,1536", help="d_inner values (Vim-Ti / S / B: 384 / 768 / 1536)")
    ap.add_argument("--lengths", default=None, help="token counts (default 197,164,131,98; 197,98 with --sweep)")
    ap.add_argument("--configs", default=None, help="only these tilings: BLOCK_M,BLOCK_K,BLOCK_N,warps,stages;...")
    a = ap.parse_args()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; default {tp.PROJ_CONFIG}")
    configs = [None, tp.PROJ_CONFIG, tp.PROJ_CONFIG_LARGE, tp.PROJ_CONFIG_NARROW]
    if a.configs:
        keys = ("BLOCK_M", "BLOCK_K", "BLOCK_N", "num_warps", "num_stages")
        configs = [dict(zip(keys, (int(v) for v in c.split(",")))) for c in a.configs.split(";")]
    if a.sweep:
        for bm, bk, bn, warps, stages in itertools.product((32, 64, 128), (32, 64), (64, 128), (4, 8), (2, 3)):
            configs.append({"BLOCK_M": bm, "BLOCK_K": bk, "BLOCK_N": bn, "num_warps": warps, "num_stages": stages})
    lengths = [int(v) for v in a.lengths.split(",")] if a.lengths else [197, 98] if a.sweep else [197, 164, 131, 98]
    for D in (int(v) for v in a.dims.split(",")):
        R = D // 32  # dt_rank = ceil(d_model / 16) = d_inner / 32 for Vim
        for L in lengths:
            torch.manual_seed(D + L)
            N, M = 16, 128 * L
            uf, ub = (torch.randn(128, L, D, device="cuda", dtype=torch.float16) for _ in range(2))
            w = [(torch.randn(R + 2 * N, D, device="cuda") / D ** 0.5).half(),
                 (torch.randn(R + 2 * N, D, device="cuda") / D ** 0.5).half(),
                 (torch.randn(D, R, device="cuda") / R ** 0.5).half(), (torch.randn(D, R, device="cuda") / R ** 0.5).half()]
            t_ref = 1e3 * _event_ms(_graphed(lambda: bidir_scan_inputs_torch(uf, ub, *w, N)), a.reps, 10)
            gb = 2 * M * (2 * D + R + 2 * N) * 2 / 1e9
            print(f"D={D} R={R} M=128x{L}: cuBLAS, four GEMMs {t_ref:.1f} us ({gb / t_ref * 1e3:.2f} TB/s)", flush=True)
            best = None
            for cfg in configs:
                try:
                    xd, de = tp.bidir_scan_inputs(uf, ub, *w, N, cfg)
                    err = max(max(_err(xd[d].flatten(0, 1), u.flatten(0, 1), w[d]),
                                  _err(de[d].flatten(0, 1), xd[d, ..., :R].flatten(0, 1), w[2 + d]))
                              for d, u in ((0, uf), (1, ub)))
                    t = 1e3 * _event_ms(_graphed(lambda: tp.bidir_scan_inputs(uf, ub, *w, N, cfg)), a.reps, 10)
                except Exception as exc:  # a tiling that does not compile (shared memory) is skipped
                    print(f"   {cfg}: failed ({type(exc).__name__})")
                    continue
                if best is None or t < best[0]:
                    best = (t, cfg)
                print(f"   kernel {cfg or 'default'}: {t:.1f} us ({gb / t * 1e3:.2f} TB/s), "
                      f"{t_ref / t:.2f}x, error / bound {err:.2f}", flush=True)
            print(f"   best: {best[1] or 'default'} {best[0]:.1f} us")


if __name__ == "__main__":
    main()

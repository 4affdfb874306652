"""The persistent TMA GEMM's left-over tiles cut into row parts (``rmeeto.ops.triton.tma_gemm.tail_split``): graphed
time per call of in_proj at Vim-Ti's and Vim-S's widths, and of Vim-B's sum + out_proj, at every token count of
the paper schedules (batch 128, fp16), with the left-over tiles whole (split 1), in 2 or 4 row parts, and as the
launcher chooses (auto). Every split's output must equal split 1's bit for bit. Per width: the sums over the merged
and the unmerged forward (what ``TAIL_SPLIT_MIN_K`` and the rule of ``tail_split`` rest on).

    PYTHONPATH=src python3 benchmarks/tail_split_gpu.py [--models Ti,S,B] [--reps 15] [--splits 1,2,4]
"""

from __future__ import annotations

import argparse

import torch

from bench_merge_gpu import _event_ms, _graphed
from rmeeto.merge import MergeConfig
from rmeeto.ops.triton import inproj as ti
from rmeeto.ops.triton import outproj as to
from rmeeto.ops.triton import tma_gemm as tg

# name: (model, op, K, N, config, two planes)
SHAPES = {"Ti": ("vim_tiny_patch16_224", "in_proj", 192, 768, ti.INPROJ_CONFIG, False),
          "S": ("vim_small_patch16_224", "in_proj", 384, 1536, ti.INPROJ_CONFIG, False),
          "B": ("vim_base_patch16_224", "out_proj", 1536, 768, to.TMA_CONFIG, True)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="Ti,S,B")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--splits", default="1,2,4")
    ap.add_argument("--batch", type=int, default=128)
    a = ap.parse_args()
    dev = torch.device("cuda")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {sms} SMs; TAIL_SPLIT_MIN_K "
          f"{tg.TAIL_SPLIT_MIN_K}",
          flush=True)
    splits = [int(v) for v in a.splits.split(",")]
    for key in a.models.split(","):
        model, op, K, N, cfg, two = SHAPES[key]
        sched = [s.tokens_out for s in MergeConfig.paper(model).schedule(197, 24)]
        if op == "out_proj":  # the TMA tiles serve only up to TMA_MAX_ROWS rows
            sched = [L for L in sched if a.batch * L <= to.TMA_MAX_ROWS] or sched
        torch.manual_seed(K)
        w = (torch.randn(N, K, device=dev) / K ** 0.5).half()
        per = {}
        print(f"== {key}: {op} {K} -> {N}, tiles {cfg['BLOCK_M']} x {cfg['BLOCK_N']}", flush=True)
        for L in sorted(set(sched) | {197}, reverse=True):
            M = a.batch * L
            x = torch.randn(M, K, device=dev, dtype=torch.half)
            x2 = torch.randn(M, K, device=dev, dtype=torch.half) if two else None
            tiles = tg.cdiv(M, cfg["BLOCK_M"]) * tg.cdiv(N, cfg["BLOCK_N"])
            ref = None
            cells = []
            for s in splits + ["auto"]:
                c = dict(cfg) if s == "auto" else dict(cfg, TAIL_SPLIT=s)
                g = tg.Gemm(M, N, K, dev, c, two_a=two)
                out = torch.empty(M, N, device=dev, dtype=torch.half)
                g(x, x2, w, out)
                if ref is None:
                    ref = out.clone()
                same = torch.equal(out, ref)
                us = 1e3 * _event_ms(_graphed(lambda: g(x, x2, w, out)), a.reps, 10)
                per[(s, L)] = us
                cells.append(f"{s}{'' if s != 'auto' else '=' + str(g.meta['SPLIT'])}: {us:6.2f}"
                             + ("" if same else " BITS DIFFER"))
            print(f"  L={L:3d} tiles {tiles:5d} = {tiles // sms} rounds + {tiles % sms:3d}: " + ", ".join(cells),
                  flush=True)
        for s in splits + ["auto"]:
            me = sum(per[(s, L)] for L in sched)
            print(f"  {key} split {s}: merged {me:8.1f} us, unmerged {24 * per[(s, 197)]:8.1f} us per forward")
        best = sum(min(per[(s, L)] for s in splits) for L in sched)
        print(f"  {key} best split per count: merged {best:8.1f} us")


if __name__ == "__main__":
    main()

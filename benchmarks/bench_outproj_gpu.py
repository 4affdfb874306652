"""The two scan directions' sum + out_proj: the add and cuBLAS against the kernel of ``rmeeto.ops.triton.outproj``
in several tilings, graphed time per call at every token count of the merged schedule (batch 128, fp16), and
each tiling's sum over the unmerged and the merged forward. "default" is the tiling the launcher picks.

    PYTHONPATH=src python3 benchmarks/bench_outproj_gpu.py [--dims 384x192,768x384,1536x768] [--reps 15]
        [--configs "64,64,64,4,3;128,128,64,4,3"] [--table]

--configs: the tilings to time (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages each); --table: every tiling's time at
every token count, and the sum per forward when each token count takes its own best tiling.
"""

from __future__ import annotations

import argparse
import itertools

import torch
import torch.nn.functional as F

from bench_merge_gpu import _event_ms, _graphed
from rmeeto.merge import MergeConfig
from rmeeto.ops.triton import outproj as to

# tokens each of the 24 layers processes under the paper preset, by d_inner (Vim-Ti, S, B)
MODELS = {384: "vim_tiny_patch16_224", 768: "vim_small_patch16_224", 1536: "vim_base_patch16_224"}


def schedule(K: int) -> list[int]:
    return [s.tokens_out for s in MergeConfig.paper(MODELS[K]).schedule(197, 24)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dims", default="384x192,768x384,1536x768", help="d_inner x d_model pairs")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--sweep", action="store_true", help="more tilings than the default's neighbours")
    ap.add_argument("--configs", default="", help="tilings 'BM,BN,BK,warps,stages;...' instead of the list")
    ap.add_argument("--table", action="store_true", help="every tiling at every token count, best per count")
    a = ap.parse_args()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; default {to.OUTPROJ_CONFIG}, up to "
          f"{to.OUTPROJ_SMALL_ROWS} rows of {to.OUTPROJ_SMALL_K} channels {to.OUTPROJ_SMALL_CONFIG}", flush=True)
    configs = [None]
    shapes = ((128, 128, 64, 8, 3), (128, 64, 64, 4, 3), (64, 128, 64, 4, 3), (128, 256, 64, 8, 3),
              (64, 64, 64, 4, 3), (128, 128, 32, 8, 4), (128, 128, 64, 4, 3), (256, 128, 64, 8, 3))
    if a.sweep:
        shapes = tuple(itertools.product((64, 128, 256), (64, 128, 256), (32, 64), (4, 8), (3, 4)))
    if a.configs:
        shapes = tuple(tuple(int(v) for v in c.split(",")) for c in a.configs.split(";"))
    for bm, bn, bk, warps, stages in shapes:
        configs.append({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "num_warps": warps,
                        "num_stages": stages})
    for pair in a.dims.split(","):
        K, N = (int(v) for v in pair.split("x"))
        sched = schedule(K)
        torch.manual_seed(K)
        w = (torch.randn(N, K, device="cuda") / K ** 0.5).half()
        per = {}  # (config index, L) -> us
        for L in sorted(set(sched), reverse=True):
            y = torch.randn(2, 128, L, K, device="cuda", dtype=torch.float16)
            ref = F.linear(y[0] + y[1], w)
            per[("cublas", L)] = 1e3 * _event_ms(_graphed(lambda: F.linear(torch.add(y[0], y[1]), w)), a.reps, 10)
            for i, cfg in enumerate(configs):
                try:
                    got = to.sum_out_proj(y, w, cfg)
                    if (got.float() - ref.float()).abs().max().item() > 0.05 * ref.float().abs().max().item():
                        print(f"  {cfg}: wrong", flush=True)
                        continue
                    per[(i, L)] = 1e3 * _event_ms(_graphed(lambda: to.sum_out_proj(y, w, cfg)), a.reps, 10)
                except Exception as e:  # a tiling that does not fit
                    print(f"  {cfg}: {type(e).__name__}", flush=True)
            best = min((k for k in per if k[1] == L and k[0] != "cublas"), key=per.get)
            print(f"K={K} N={N} L={L}: add + cuBLAS {per[('cublas', L)]:.1f} us, default {per.get((0, L), 0):.1f}, "
                  f"best {per[best]:.1f} {configs[best[0]]}", flush=True)
        rows = []
        for key in ["cublas"] + list(range(len(configs))):
            if all((key, L) in per for L in set(sched)):
                rows.append((sum(per[(key, L)] for L in sched), 24 * per[(key, 197)], key))
        rows.sort()
        if a.table:
            def tag(i):
                c = configs[i]
                if c is None:
                    return "default (by rows)"
                return "x".join(str(c[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")) + \
                    f"/{c['num_warps']}w/{c['num_stages']}s"
            for i in ["cublas"] + list(range(len(configs))):
                print(f"  table K={K} {i if i == 'cublas' else tag(i):>22}: " + " ".join(
                    f"{L}:{per[(i, L)]:.1f}" if (i, L) in per else f"{L}:-" for L in sorted(set(sched))), flush=True)
            best = {L: min((k for k in per if k[1] == L and k[0] != "cublas"), key=per.get)
                    for L in set(sched)}
            print(f"  K={K}: each token count's best tiling: merged {sum(per[best[L]] for L in sched):.0f} us per "
                  f"forward; " + ", ".join(f"{L}: {tag(best[L][0])}" for L in sorted(best)), flush=True)
        for me, un, key in rows[:6] + [r for r in rows if r[2] == "cublas"]:
            name = key if key == "cublas" else ("default" if key == 0 else configs[key])
            print(f"  K={K}: merged {me:.0f} us, unmerged {un:.0f} us per forward: {name}", flush=True)


if __name__ == "__main__":
    main()

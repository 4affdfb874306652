"""x_proj + dt_proj of both directions (``rmeeto.ops.triton.proj``) at every token count of the merged Vim-Ti / S
schedules: the tiles the launcher takes, against tiles whose rows per program (``ROWS``, the rest of the tile
masked) spread the rows evenly over a whole number of programs per SM. With BLOCK_M rows a program, the last wave
of programs is part-full at most token counts (Vim-S at 142 tokens: 2 x 142 programs of 128 rows on 132 SMs), so
the time per call falls in steps, not in proportion to the rows; a merged forward pays those steps at every layer.

    PYTHONPATH=src python3 benchmarks/proj_balance_gpu.py [--dims 384,768] [--lengths ...] [--reps 15]
        [--per-sm 2,3,4,6,8]

Per (channels, tokens): the default tiles' us per call (graphed), then per tile shape and programs per SM (both
directions together) the balanced time, and the best. The last lines: the sum over each schedule (each token
count twice, as the model runs it), default against best-balanced, and against the rows' share of the 197-token
call.
"""

from __future__ import annotations

import argparse

import torch

from bench_merge_gpu import _event_ms, _graphed
from rmeeto.ops.triton import proj as tp

SCHEDULES = {384: [197, 192, 187, 182, 177, 172, 167, 162, 157, 152, 147, 76],
             768: [197, 186, 175, 164, 153, 142, 131, 120, 109, 98, 87, 76],
             1536: [197, 186, 175, 164, 153, 142, 131, 120, 109, 98, 87, 76]}
SHAPES = [
    {"BLOCK_M": 128, "BLOCK_K": 64, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3},
    {"BLOCK_M": 128, "BLOCK_K": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
    {"BLOCK_M": 128, "BLOCK_K": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3, "maxnreg": 168},
    {"BLOCK_M": 128, "BLOCK_K": 64, "BLOCK_N": 128, "num_warps": 4, "num_stages": 3},
    {"BLOCK_M": 64, "BLOCK_K": 64, "BLOCK_N": 128, "num_warps": 4, "num_stages": 3},
    {"BLOCK_M": 64, "BLOCK_K": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2},
]


def name(cfg: dict) -> str:
    reg = f"/{cfg['maxnreg']}r" if cfg.get("maxnreg") else ""
    return f"{cfg['BLOCK_M']}x{cfg['BLOCK_K']}x{cfg['BLOCK_N']}/{cfg['num_warps']}w{cfg['num_stages']}s{reg}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", default="384,768")
    ap.add_argument("--lengths", default=None, help="token counts (default: the merged schedule of each width)")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--per-sm", default="2,3,4,5,6,8", help="programs per SM to spread the rows over")
    ap.add_argument("--shapes", default=None, help="only these of SHAPES (indices, e.g. 0,1,2)")
    a = ap.parse_args()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    per_sm = [int(v) for v in a.per_sm.split(",")]
    shapes = [SHAPES[int(i)] for i in a.shapes.split(",")] if a.shapes else SHAPES
    hopper = tp.hopper_sms(torch.device("cuda"))
    print(f"{torch.cuda.get_device_name()} ({sms} SMs), torch {torch.__version__}", flush=True)
    for D in (int(v) for v in a.dims.split(",")):
        R, N = D // 32, 16
        lengths = [int(v) for v in a.lengths.split(",")] if a.lengths else SCHEDULES[D]
        w = [(torch.randn(R + 2 * N, D, device="cuda") / D ** 0.5).half(),
             (torch.randn(R + 2 * N, D, device="cuda") / D ** 0.5).half(),
             (torch.randn(D, R, device="cuda") / R ** 0.5).half(), (torch.randn(D, R, device="cuda") / R ** 0.5).half()]
        tot_default = tot_best = 0.0
        base = None
        best_by_len = {}
        for L in lengths:
            M = 128 * L
            uf, ub = (torch.randn(128, L, D, device="cuda", dtype=torch.float16) for _ in range(2))
            ref = tp.bidir_scan_inputs(uf, ub, *w, N)

            def timed(cfg):
                got = tp.bidir_scan_inputs(uf, ub, *w, N, cfg)
                ok = all(torch.allclose(g.float(), r.float(), rtol=2e-2, atol=2e-2) for g, r in zip(got, ref))
                return 1e3 * _event_ms(_graphed(lambda: tp.bidir_scan_inputs(uf, ub, *w, N, cfg)), a.reps, 10), ok

            t_def, _ = timed(None)
            if base is None:
                base = t_def / L
            default, table = tp.proj_config(M, D, hopper), tp.proj_config(M, D)
            rows = f" ({default['ROWS']} rows)" if "ROWS" in default else ""
            row = [f"D={D} L={L}: default {name(default)}{rows} {t_def:.1f} us (share {base * L:.1f})"]
            if table != default:  # the whole-wave rules off
                row.append(f"table {name(table)} {timed(table)[0]:.1f}")
            best = (t_def, "default")
            for cfg in shapes:
                for k in per_sm:
                    programs = k * sms // 2  # per direction
                    rpp = -(-M // programs)
                    rpp = -(-rpp // 8) * 8
                    if rpp > cfg["BLOCK_M"] or rpp < cfg["BLOCK_M"] // 4:
                        continue
                    c = dict(cfg, ROWS=rpp)
                    try:
                        t, ok = timed(c)
                    except Exception as exc:  # a tiling that does not compile (shared memory) is skipped
                        row.append(f"{name(cfg)} x{k}: failed ({type(exc).__name__})")
                        continue
                    row.append(f"{name(cfg)} x{k} ({rpp} rows) {t:.1f}{'' if ok else ' WRONG'}")
                    if ok and t < best[0]:
                        best = (t, f"{name(cfg)} x{k} ({rpp} rows)")
            tot_default += 2 * t_def
            tot_best += 2 * best[0]
            best_by_len[L] = best
            print("\n   ".join(row), flush=True)
            print(f"   best: {best[1]} {best[0]:.1f} us", flush=True)
        share = 2 * base * sum(lengths)
        print(f"# D={D}: schedule sum default {tot_default:.1f} us, best balanced {tot_best:.1f} us, rows' share of "
              f"the {lengths[0]}-token call {share:.1f} us", flush=True)
        print(f"# D={D} best per length: " + "; ".join(f"{L}: {b[1]} {b[0]:.1f}" for L, b in best_by_len.items()))


if __name__ == "__main__":
    main()

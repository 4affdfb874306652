#!/usr/bin/env bash
# Thirty-first session, call 1: the matching's partner step over whole rows loaded once (MATCH_CONFIG["rows_max_elems"];
# the call ran the key's first form, rows_max_c = None | 256, which selected the same kernels at Vim-Ti's 192 channels)
# against the channel steps, per merging layer and in whole graphed Vim-Ti (alternating processes); then Vim-Ti's
# in_proj by backend and the x_proj + dt_proj tiles at Vim-Ti's merged token counts.
#   bash benchmarks/sessions/s31_gpu1.sh        (OUT=out/s31a by default; about 540 s)
set -uo pipefail
OUT=${OUT:-out/s31a} BUDGET_S=${BUDGET_S:-540} source benchmarks/_session.sh
echo "== matching per merging layer, rows_max_elems None | 24576 ($(left) s left)"
(cd benchmarks && timeout 120 python3 match_schedule_gpu.py --models vim_tiny_patch16_224 --ab "rows_max_elems=None;24576") \
  2>&1 | quiet | tee "$OUT/match_rows.txt" | cut -c1-200
for v in None 24576 None 24576; do
  L=$(left); [ "$L" -lt 150 ] && break
  echo "== Vim-Ti graphed, rows_max_elems=$v ($L s left)"
  timeout 80 python3 benchmarks/bench_set.py --set rows_max_elems=$v -- bench vim_tiny_patch16_224 --preset paper \
    --modes cudagraph --rounds 2 2>&1 | quiet | tee -a "$OUT/bench_rows_$v.txt" | grep -i "cudagraph\|error" | cut -c1-170
done
L=$(left)
if [ "$L" -gt 60 ]; then
  echo "== Vim-Ti in_proj / out_proj by backend ($L s left)"
  (cd benchmarks && timeout $(( L > 150 ? 140 : L - 10 )) python3 gemm_ab_gpu.py --models Ti --backends cublas,triton,tma) \
    2>&1 | quiet | tee "$OUT/gemm_ti.txt" | grep -v "^   " | cut -c1-250
fi
L=$(left)
if [ "$L" -gt 40 ]; then
  echo "== x_proj + dt_proj tiles at Vim-Ti's token counts ($L s left)"
  (cd benchmarks && timeout $(( L - 5 )) python3 bench_proj_gpu.py --dims 384 --sweep --lengths 197,157,152,147,76 \
    --reps 15) 2>&1 | quiet | tee "$OUT/proj_tiles_ti.txt" | grep -v "^ " | tail -14 | cut -c1-200
fi
echo "done, $(left) s left"

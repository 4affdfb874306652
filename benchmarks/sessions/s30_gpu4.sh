#!/usr/bin/env bash
# Thirtieth session, call 4: issue 14's inference targets in one run on the final tree (all three models, eager and
# graphed, three rounds); then the projection kernel's tiles at Vim-Ti's merged token counts, if time is left.
#   bash benchmarks/sessions/s30_gpu4.sh        (OUT=out/s30d by default; about 320 s)
set -uo pipefail
OUT=${OUT:-out/s30d} BUDGET_S=${BUDGET_S:-320} source benchmarks/_session.sh
echo "== Vim-Ti, S, B eager and graphed, three rounds ($(left) s left)"
timeout 250 python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224 --preset paper \
  --modes eager,cudagraph --rounds 3 --json "$OUT/bench.json" 2>&1 | quiet | tee "$OUT/bench.txt" | cut -c1-170
L=$(left)
if [ "$L" -gt 40 ]; then
  echo "== x_proj + dt_proj tiles at Vim-Ti's token counts ($L s left)"
  (cd benchmarks && timeout $(( L - 5 )) python3 bench_proj_gpu.py --dims 384 --sweep --lengths 197,157,152,147,76 \
    --reps 15) 2>&1 | quiet | tee "$OUT/proj_tiles_ti.txt" | grep -v "^ " | tail -12 | cut -c1-200
fi
echo "done, $(left) s left"

#!/usr/bin/env bash
# Thirty-first session, call 6: Vim-Ti's last merging layer (r=71) with the compact plan against the all-pairs one; then
# issue 14's inference targets on another card, all three models eager and graphed in one run, twice.
#   bash benchmarks/sessions/s31_gpu5.sh        (OUT=out/s31e by default; about 150 s)
set -uo pipefail
OUT=${OUT:-out/s31e} BUDGET_S=${BUDGET_S:-300} source benchmarks/_session.sh
echo "== Vim-Ti matching, compact_max_r 32 | 128 ($(left) s left)"
(cd benchmarks && timeout 90 python3 match_schedule_gpu.py --models vim_tiny_patch16_224 --ab "compact_max_r=32;128") \
  2>&1 | quiet | tee "$OUT/match_compact.txt" | cut -c1-200
for k in 1 2; do
  L=$(left); [ "$L" -lt 60 ] && break
  echo "== Vim-Ti, S, B eager and graphed, three rounds, run $k ($L s left)"
  timeout $(( L - 5 )) python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224 \
    --preset paper --modes eager,cudagraph --rounds 3 --json "$OUT/bench$k.json" 2>&1 | quiet | tee "$OUT/bench$k.txt" \
    | grep "r=" | cut -c1-150
done
echo "done, $(left) s left"

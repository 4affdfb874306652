#!/usr/bin/env bash
# Thirty-first session, call 4: issue 14's inference targets in one run on the final tree (all three models, eager and
# graphed, three rounds).
#   bash benchmarks/sessions/s31_gpu4.sh        (OUT=out/s31d by default; about 300 s)
set -uo pipefail
OUT=${OUT:-out/s31d} BUDGET_S=${BUDGET_S:-320} source benchmarks/_session.sh
echo "== Vim-Ti, S, B eager and graphed, three rounds ($(left) s left)"
timeout 300 python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224 --preset paper \
  --modes eager,cudagraph --rounds 3 --json "$OUT/bench.json" 2>&1 | quiet | tee "$OUT/bench.txt" | cut -c1-170
echo "done, $(left) s left"

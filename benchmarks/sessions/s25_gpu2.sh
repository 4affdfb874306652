#!/usr/bin/env bash
# Twenty-fifth session, call 2: what each merging layer of Vim-Ti / S costs (matching, merging step against the plain
# norm), where merged Vim-Ti's graphed time goes, and the graphed ratios of the tree as it is.
#   bash benchmarks/sessions/s25_gpu2.sh        (OUT=out/s25b by default; about 300 s)
set -uo pipefail
OUT=${OUT:-out/s25b} BUDGET_S=${BUDGET_S:-420} source benchmarks/_session.sh
export PYTHONPATH=$PWD/src
echo "== 1. merging layers one by one"
(cd benchmarks && timeout 150 python3 match_schedule_gpu.py 2>&1) | quiet | tee "$OUT/match_schedule.txt"
echo "== 2. profile, Vim-Ti graphed ($(left) s left)"
timeout 120 python3 benchmarks/profile_gpu.py --model vim_tiny_patch16_224 --what inference --variants unmerged,merged \
  --modes cudagraph --rows 30 2>&1 | quiet | tee "$OUT/profile_ti.txt" | cut -c1-160
L=$(left); echo "== 3. Vim-Ti, S graphed ($L s left)"
[ "$L" -gt 60 ] && timeout $(( L - 10 )) python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 --preset paper \
  --modes cudagraph --rounds 3 2>&1 | quiet | tee "$OUT/bench.txt" | grep -i "cudagraph\|error" | cut -c1-200
echo "done, $(left) s left"

#!/usr/bin/env bash
# Twenty-fourth session, call 2: every GPU test after the classic scan backward was removed (the reduce-scatter
# kernel of ops/triton/scan_bwd.py is now the only backward), then the re-training step of merged / unmerged
# Vim-S in eager, compile and cudagraph modes on this tree.
#   bash benchmarks/sessions/s24_gpu2.sh        (OUT=out/s24b by default; about 570 s)
set -uo pipefail
OUT=${OUT:-out/s24b} BUDGET_S=${BUDGET_S:-575} source benchmarks/_session.sh
echo "== 1. GPU tests"
OUT=$OUT/tests WORKERS=16 LIMIT_S=330 bash benchmarks/gpu_tests.sh tests 2>&1 | tail -25
L=$(left); echo "== 2. training step, merged Vim-S student + unmerged teacher, bf16, batch 128 ($L s left)"
[ "$L" -gt 60 ] && timeout $(( L - 8 )) python3 -m rmeeto bench vim_small_patch16_224 --train --no-inference \
  --modes eager,cudagraph,compile --train-repeats 4 --json "$OUT/train.json" 2>&1 | quiet | tee "$OUT/train.txt" \
  | grep -i "eager\|compile\|cudagraph\|error" | cut -c1-200
echo "done, $(left) s left"

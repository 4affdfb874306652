#!/usr/bin/env bash
# Written in the twenty-first session, which had no device time (51 s left of the 1,800): the one call the next
# session should make first. What issue 14 asks that no call has measured yet is the merged training step
# *compiled* beside eager and graphed; then the compiled GPU tests and every inference mode for Ti / S / B in one
# run (the graphed Vim-S 1.40 and Ti 1.17 targets, and how far the host moves eager Vim-Ti on this card).
#   bash benchmarks/sessions/s21_gpu1.sh        (OUT=out/s21a by default; about 560 s)
set -uo pipefail
OUT=${OUT:-out/s21a} BUDGET_S=${BUDGET_S:-570} source benchmarks/_session.sh
echo "== 1. training step, merged Vim-S student + unmerged teacher, bf16, batch 128: eager, compile, cudagraph"
timeout 230 python3 -m rmeeto bench vim_small_patch16_224 --train --no-inference --modes eager,compile,cudagraph \
  --train-repeats 4 --json "$OUT/train.json" 2>&1 | quiet | tee "$OUT/train.txt" | grep -i "eager\|compile\|cudagraph\|error" \
  | cut -c1-200
echo "== 2. compiled GPU tests ($(left) s left)"
timeout 120 python3 -m pytest -m gpu -p no:cacheprovider -q -rfE --tb=short tests/ops/test_gpu_launch.py \
  -k compiled 2>&1 | grep -v "Warning\|warn\|^  \|^$" | tail -6 | tee "$OUT/tests.txt"
L=$(left); echo "== 3. Vim-Ti, S, B: eager, compile, compile+cudagraph, cudagraph ($L s left)"
[ "$L" -gt 60 ] && timeout $(( L - 10 )) python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 \
  vim_base_patch16_224 --preset paper --modes eager,compile,compile+cudagraph,cudagraph --rounds 3 \
  --json "$OUT/bench.json" 2>&1 | quiet | tee "$OUT/bench.txt" | grep -i "eager\|compile\|cudagraph\|error" | cut -c1-200
echo "done, $(left) s left"

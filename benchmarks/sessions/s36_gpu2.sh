#!/usr/bin/env bash
# Thirty-sixth session, call 2: call 1's training step was cut by its time limit after the eager mode, and its eager
# Vim-S rounds swung 1.39 -> 0.96 (merged at ~15 ms, about its GPU time plus a forward's host time). Here: does an
# eager forward synchronise, and how long does the host take to issue one (eager_jitter_gpu.py); the training step in
# all three modes, fresh process; eager Vim-Ti / S again (5 rounds). Packed into one archive at the end.
#   bash benchmarks/sessions/s36_gpu2.sh        (OUT=out/s36b by default; about 560 s)
set -uo pipefail
OUT=${OUT:-out/s36b} BUDGET_S=${BUDGET_S:-570} source benchmarks/_session.sh
echo "== 1. eager forwards: syncs, host issue time ($(left) s left)"
timeout 150 python3 benchmarks/eager_jitter_gpu.py --tries 60 2>&1 | quiet | tee "$OUT/jitter.txt" | cut -c1-200
L=$(left); echo "== 2. training step: eager, compile, cudagraph ($L s left)"
timeout $(( L - 90 )) python3 -m rmeeto bench vim_small_patch16_224 --train --no-inference \
  --modes cudagraph,eager,compile --train-repeats 3 --json "$OUT/train.json" 2>&1 | quiet \
  | tee "$OUT/train.txt" | grep -i "eager\|compile\|cudagraph\|error" | cut -c1-200
L=$(left); echo "== 3. eager Vim-Ti, S, 5 rounds ($L s left)"
[ "$L" -gt 50 ] && timeout $(( L - 8 )) python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 \
  --preset paper --modes eager --rounds 5 --json "$OUT/eager.json" 2>&1 | quiet | tee "$OUT/eager.txt" \
  | grep -i "eager\|error" | cut -c1-200
echo "done, $(left) s left"
tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz --warning=no-file-changed . ; find "$OUT" -type f ! -name all.tar.gz -delete

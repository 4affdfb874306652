#!/usr/bin/env bash
# Thirty-seventh session, call 3: issue 14's targets on the final tree (direct launches, mixer plans passing
# addresses) in one run on one card. Every inference mode of Vim-Ti / S / B (paper presets, 3 rounds); the training
# step (merged Vim-S student + unmerged teacher, bf16) eager, compiled and graphed; the profile of Vim-S unmerged and
# merged, eager and graphed (kernel time against wall time, launches per forward). Packed into one archive at the end.
#   bash benchmarks/sessions/s37_gpu3.sh        (OUT=out/s37c by default; about 560 s)
set -uo pipefail
OUT=${OUT:-out/s37c} BUDGET_S=${BUDGET_S:-570} source benchmarks/_session.sh
echo "== 1. Vim-Ti, S, B: eager, compile, compile+cudagraph, cudagraph"
timeout 340 python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224 --preset paper \
  --modes eager,compile,compile+cudagraph,cudagraph --rounds 3 --json "$OUT/bench.json" 2>&1 | quiet \
  | tee "$OUT/bench.txt" | grep -i "eager\|compile\|cudagraph\|error" | cut -c1-200
L=$(left); echo "== 2. training step: eager, compile, cudagraph ($L s left)"
[ "$L" -gt 100 ] && timeout $(( L > 230 ? 150 : L - 80 )) python3 -m rmeeto bench vim_small_patch16_224 --train \
  --no-inference --modes cudagraph,eager,compile --train-repeats 3 --json "$OUT/train.json" 2>&1 | quiet \
  | tee "$OUT/train.txt" | grep -i "eager\|compile\|cudagraph\|error" | cut -c1-200
L=$(left); echo "== 3. profile of Vim-S, eager and graphed ($L s left)"
[ "$L" -gt 40 ] && timeout $(( L - 10 )) python3 benchmarks/profile_gpu.py --model vim_small_patch16_224 \
  --what inference --variants unmerged,merged --modes eager,cudagraph --rows 24 2>&1 | quiet \
  | tee "$OUT/profile_s.txt" | grep "^# " | cut -c1-260
echo "done, $(left) s left"
tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz --warning=no-file-changed . ; find "$OUT" -type f ! -name all.tar.gz -delete

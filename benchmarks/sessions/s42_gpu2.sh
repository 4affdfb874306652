#!/usr/bin/env bash
# Forty-second session, call 2: the re-training step of Vim-Ti (eager, compiled, graphed; the compiled step at full
# size had not been measured) and of Vim-S (graphed: issue 14's 1,500 img/s target) on the final source, then issue
# 14's inference targets (the three models, eager and graphed, alternating rounds).
#   bash benchmarks/sessions/s42_gpu2.sh        (OUT=out/s42b by default; about 585 s)
set -uo pipefail
OUT=${OUT:-out/s42b} BUDGET_S=${BUDGET_S:-585} source benchmarks/_session.sh
L=$(left); echo "== Vim-Ti train, eager / compile / cudagraph ($L s left)"
timeout 240 python3 -m rmeeto bench vim_tiny_patch16_224 --train --no-inference --modes eager,compile,cudagraph \
  --train-repeats 6 2>&1 | quiet | tee "$OUT/train_ti.txt" | grep -i "eager\|compile\|cudagraph\|error" | cut -c1-200
L=$(left); echo "== Vim-S train, cudagraph ($L s left)"
timeout 120 python3 -m rmeeto bench vim_small_patch16_224 --train --no-inference --modes cudagraph \
  --train-repeats 6 2>&1 | quiet | tee "$OUT/train_s.txt" | grep -i "cudagraph\|error" | cut -c1-200
L=$(left); echo "== inference targets ($L s left)"
timeout $(( L - 15 )) python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224 \
  --preset paper --modes cudagraph,eager --rounds 5 --repeats 60 2>&1 | quiet | tee "$OUT/targets.txt" \
  | grep -i "vim_\|error" | cut -c1-200
echo "done, $(left) s left"
tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz --warning=no-file-changed . ; find "$OUT" -type f ! -name all.tar.gz -delete

#!/usr/bin/env bash
# Twelfth session's last device call (one GPU), on the final tree:
#   bash benchmarks/sessions/s12_final.sh
# 1. every GPU test (the whole suite, 16 xdist workers);
# 2. the training step, merged Vim-S student + teacher, bf16, graphed (the fold is inference-only: unchanged);
# 3. Vim-S inference compiled (torch.compile, its own mode) and graphed, paper preset.
set -uo pipefail
OUT=${OUT:-out/s12f}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-src}
quiet() { grep -v "Warning\|warn(\|return Variable\|_warn_once\|^$" ; }
nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tee "$OUT/gpu.txt"
echo "== 1. GPU tests"
OUT="$OUT/tests" WORKERS=16 LIMIT_S=${TESTS_S:-280} bash benchmarks/gpu_tests.sh tests 2>&1 | tail -8
rm -f "$OUT/tests/junit.xml"
echo "== 2. training step"
timeout 150 python3 -m rmeeto bench vim_small_patch16_224 --train --no-inference --modes cudagraph \
  --json "$OUT/train.json" 2>&1 | quiet | tee "$OUT/train.txt"
echo "== 3. compiled and graphed inference"
timeout 200 python3 -m rmeeto bench vim_small_patch16_224 --preset paper --modes compile,cudagraph \
  --json "$OUT/compile.json" 2>&1 | quiet | tee "$OUT/compile.txt"

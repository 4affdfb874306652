#!/usr/bin/env bash
# Thirteenth session's third device call (one GPU): the forward tiles at Vim-Ti's and Vim-B's widths, and the
# training step after the scan's math changes (issue 14).
#   bash benchmarks/sessions/s13_dims.sh
# 1. every forward tile candidate at 384 channels (Vim-Ti), then `rmeeto bench` Vim-Ti graphed with the fastest;
# 2. every candidate at 1536 channels (Vim-B);
# 3. the training step, merged Vim-S student + teacher, bf16, graphed.
set -uo pipefail
OUT=${OUT:-out/s13}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=src
quiet() { grep -v "Warning\|warn(\|return Variable\|_warn_once\|^$" ; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | head -1 | tee "$OUT/gpu.txt"
echo "== 1. Vim-Ti width"
timeout 150 python3 benchmarks/tuned_bench.py --dim 384 -- bench vim_tiny_patch16_224 --preset paper --modes cudagraph \
  --json "$OUT/bench_ti.json" 2>&1 | quiet | tee "$OUT/tiles_ti.txt"
echo "== 2. Vim-B width"
timeout 100 python3 benchmarks/tuned_bench.py --dim 1536 2>&1 | quiet | tee "$OUT/tiles_b.txt"
echo "== 3. training step"
timeout 200 python3 -m rmeeto bench vim_small_patch16_224 --train --no-inference --modes cudagraph --train-repeats 6 \
  --json "$OUT/train.json" 2>&1 | quiet | tee "$OUT/train.txt"

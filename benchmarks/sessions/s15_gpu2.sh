#!/usr/bin/env bash
# Fifteenth session's second device call (one GPU): the merge + norm kernel's row tiles against the plain norm
# kernel; every GPU test; `rmeeto bench` Vim-Ti/S/B eager and graphed. The test logs go out as one tar file.
#   bash benchmarks/sessions/s15_gpu2.sh
set -uo pipefail
OUT=${OUT:-out/s15b}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
quiet() { grep -v "Warning\|warn(\|return Variable\|_warn_once\|^$" ; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | head -1
echo "== 1. merge + norm tiles"
(cd benchmarks && PYTHONPATH=../src timeout 120 python3 bench_merge_norm_gpu.py 2>&1 | quiet | tee "$OUT/merge_norm_tiles.txt")
echo "== 2. every GPU test"
PYTHONPATH=src OUT="$OUT/tests" WORKERS=16 LIMIT_S=330 bash benchmarks/gpu_tests.sh tests 2>&1 | tail -12
tar -czf "$OUT/tests.tgz" -C "$OUT" tests && rm -rf "$OUT/tests"
echo "== 3. bench"
PYTHONPATH=src timeout 150 python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224 \
  --preset paper --modes eager,cudagraph --json "$OUT/bench.json" 2>&1 | quiet | tee "$OUT/bench.txt"

#!/usr/bin/env bash
# Eighteenth session's first device call (one GPU): the GPU tests of the code the seventeenth session's review
# mended after its last device call (plans, launcher, matching, whole models); where the matching's time goes and
# the split-matching prototype (benchmarks/match_split_gpu.py); graphed Vim-S as a same-card baseline.
#   bash benchmarks/sessions/s18_gpu1.sh
set -uo pipefail
OUT=${OUT:-out/s18a}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s); left() { echo $(( ${BUDGET_S:-570} - ($(date +%s) - T0) )); }
quiet() { grep -v "Warning\|warn(\|return Variable\|_warn_once\|^$" ; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | head -1
echo "== 1. GPU tests of the review's mends"
PYTHONPATH=src OUT="$OUT/tests" WORKERS=16 LIMIT_S=${TEST_S:-230} bash benchmarks/gpu_tests.sh \
  tests/ops/test_gpu_plan.py tests/ops/test_gpu_launch.py tests/ops/test_merge_host.py tests/ops/test_merge_fused.py \
  tests/models/test_gpu_model.py 2>&1 | tail -8
pkill -f "pytest" 2>/dev/null; sleep 3
cp "$OUT/tests/log.txt" "$OUT/tests_log.txt"; rm -rf "$OUT/tests"
echo "== 2. matching split ($(left) s left)"
PYTHONPATH=src timeout 220 python3 benchmarks/match_split_gpu.py 2>&1 | quiet | tee "$OUT/match_split.txt"
L=$(left); echo "== 3. graphed Vim-S baseline ($L s left)"
[ "$L" -gt 50 ] && PYTHONPATH=src timeout $(( L - 5 )) python3 -m rmeeto bench vim_small_patch16_224 --preset paper \
  --modes cudagraph 2>&1 | quiet | tee "$OUT/bench.txt" | grep "cudagraph"
echo "done, $(left) s left"

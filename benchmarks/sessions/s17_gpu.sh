#!/usr/bin/env bash
# Seventeenth session, first device call (one GPU): the projection and model GPU tests on the tree after 803e65d;
# where merged Vim-Ti's eager host time goes (cProfile at batch 1); the projection kernel's tilings at every
# token count of the merged Vim-S / B schedule.
#   bash benchmarks/sessions/s17_gpu.sh
set -uo pipefail
OUT=${OUT:-out/s17a}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s); left() { echo $(( ${BUDGET_S:-540} - ($(date +%s) - T0) )); }
quiet() { grep -v "Warning\|warn(\|return Variable\|_warn_once\|^$" ; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | head -1
echo "== 1. projection and model GPU tests"
PYTHONPATH=src OUT="$OUT/tests" WORKERS=16 LIMIT_S=200 bash benchmarks/gpu_tests.sh tests/ops/test_gpu_proj.py \
  tests/models/test_gpu_model.py 2>&1 | tail -8
pkill -f "pytest" 2>/dev/null; sleep 2
cp "$OUT/tests/log.txt" "$OUT/tests_log.txt"; rm -rf "$OUT/tests"
echo "== 2. host profile ($(left) s left)"
PYTHONPATH=src timeout 90 python3 benchmarks/host_profile_gpu.py --models vim_tiny_patch16_224 --rows 45 2>&1 | quiet \
  > "$OUT/host_profile.txt"; grep "^#" "$OUT/host_profile.txt"
LENS=197,186,175,164,153,142,131,120,109,98,87,76
echo "== 3. projection tilings, Vim-S ($(left) s left)"
PYTHONPATH=src:benchmarks timeout 200 python3 benchmarks/bench_proj_gpu.py --sweep --dims 768 --lengths $LENS 2>&1 \
  | quiet > "$OUT/proj_s.txt"; grep "best\|cuBLAS" "$OUT/proj_s.txt"
L=$(left); echo "== 4. projection tilings, Vim-B ($L s left)"
[ "$L" -gt 40 ] && PYTHONPATH=src:benchmarks timeout $(( L - 15 )) python3 benchmarks/bench_proj_gpu.py --sweep \
  --dims 1536 --lengths $LENS 2>&1 | quiet > "$OUT/proj_b.txt"; grep "best\|cuBLAS" "$OUT/proj_b.txt"
echo "done, $(left) s left"

#!/usr/bin/env bash
# Fourteenth session's second device call (one GPU): the one-launch match kernel with the plan's ranks counted
# directly (no 32-step bit search up to 128 sources) and unrolled norm loads.
#   bash benchmarks/sessions/s14_tune.sh
# 1. the merge's GPU tests; 2. bench_merge_gpu.py --match-tiles (Vim-Ti/S/B shapes); 3. `rmeeto bench` graphed;
# 4. the profile of Vim-S inference, graphed (every kernel).
set -uo pipefail
OUT=${OUT:-out/s14b}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s); left() { echo $(( ${BUDGET_S:-400} - ($(date +%s) - T0) )); }
quiet() { grep -v "Warning\|warn(\|return Variable\|_warn_once\|^$" ; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | head -1 | tee "$OUT/gpu.txt"
MODELS=${MODELS:-vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224}
echo "== 1. merge GPU tests"
PYTHONPATH=src OUT="$OUT/tests" WORKERS=16 LIMIT_S=150 bash benchmarks/gpu_tests.sh ${TESTS:-tests/ops/test_merge_fused.py \
  tests/ops/test_custom_ops.py tests/ops/test_gpu_launch.py tests/test_merge.py} 2>&1 | tail -8
echo "== 2. match tiles ($(left) s left)"
PYTHONPATH=src timeout 120 python3 benchmarks/bench_merge_gpu.py --match-tiles --only-sweeps --reps 20 2>&1 | quiet \
  > "$OUT/match_tiles.txt"; grep "match_plan" "$OUT/match_tiles.txt" | sed 's/match_plan graphed//; s/match+merge//'
echo "== 3. bench ($(left) s left)"
PYTHONPATH=src timeout 100 python3 -m rmeeto bench $MODELS --preset paper --modes cudagraph \
  --json "$OUT/bench_new.json" 2>&1 | quiet | tee "$OUT/bench_new.txt"
L=$(left); echo "== 4. profile ($L s left)"
[ "$L" -gt 40 ] && PYTHONPATH=src timeout $(( L - 5 )) python3 benchmarks/profile_gpu.py --what inference \
  --variants merged --modes cudagraph --rows 12 2>&1 | quiet > "$OUT/profile_s.txt"; cut -c1-70,150-240 "$OUT/profile_s.txt" | head -20

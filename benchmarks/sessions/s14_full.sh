#!/usr/bin/env bash
# Fourteenth session's third device call (one GPU): every GPU test, then the match-kernel tiling sweep, then
# `rmeeto bench` (graphed) and the merged Vim-S profile, on this tree.
#   bash benchmarks/sessions/s14_full.sh
set -uo pipefail
OUT=${OUT:-out/s14c}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s); left() { echo $(( ${BUDGET_S:-540} - ($(date +%s) - T0) )); }
quiet() { grep -v "Warning\|warn(\|return Variable\|_warn_once\|^$" ; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | head -1 | tee "$OUT/gpu.txt"
MODELS=${MODELS:-vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224}
echo "== 1. every GPU test"
PYTHONPATH=src OUT="$OUT/tests" WORKERS=16 LIMIT_S=280 bash benchmarks/gpu_tests.sh tests 2>&1 | tail -10
echo "== 2. match tiles ($(left) s left)"
PYTHONPATH=src timeout 100 python3 benchmarks/bench_merge_gpu.py --match-tiles --only-sweeps --reps 20 2>&1 | quiet \
  > "$OUT/match_tiles.txt"; grep "match_plan\|DIFF" "$OUT/match_tiles.txt" | sed 's/match_plan graphed//; s/match+merge//'
echo "== 3. bench ($(left) s left)"
PYTHONPATH=src timeout 100 python3 -m rmeeto bench $MODELS --preset paper --modes cudagraph \
  --json "$OUT/bench_new.json" 2>&1 | quiet | tee "$OUT/bench_new.txt"
L=$(left); echo "== 4. profile ($L s left)"
[ "$L" -gt 30 ] && PYTHONPATH=src timeout $(( L - 5 )) python3 benchmarks/profile_gpu.py --what inference \
  --variants merged --modes cudagraph --rows 12 2>&1 | quiet > "$OUT/profile_s.txt"; cut -c1-70,150-240 "$OUT/profile_s.txt" | grep "#\|match\|merge_norm"

#!/usr/bin/env bash
# Fourteenth session's first device call (one GPU): the one-launch match kernel.
#   OLD=<dir holding the session's starting tree's src/> bash benchmarks/sessions/s14_gpu.sh
# 1. the merge's GPU tests (the one-launch kernel against the two kernels, every tiling);
# 2. bench_merge_gpu.py --match-tiles: graphed match time, two kernels vs each one-launch tiling, Vim-Ti/S/B;
# 3. `rmeeto bench` Vim-Ti/S/B eager and graphed, this tree, then graphed with the old tree;
# 4. profiles: Vim-S graphed (every kernel), Vim-Ti eager host time, this tree and the old one.
set -uo pipefail
OUT=${OUT:-out/s14}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s); left() { echo $(( ${BUDGET_S:-560} - ($(date +%s) - T0) )); }
quiet() { grep -v "Warning\|warn(\|return Variable\|_warn_once\|^$" ; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | head -1 | tee "$OUT/gpu.txt"
MODELS=${MODELS:-vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224}
echo "== 1. merge GPU tests"
PYTHONPATH=src OUT="$OUT/tests" WORKERS=16 LIMIT_S=150 bash benchmarks/gpu_tests.sh ${TESTS:-tests/ops/test_merge_fused.py \
  tests/ops/test_custom_ops.py tests/ops/test_gpu_launch.py tests/test_merge.py} 2>&1 | tail -8
echo "== 2. match tiles ($(left) s left)"
PYTHONPATH=src timeout 120 python3 benchmarks/bench_merge_gpu.py --match-tiles --only-sweeps --reps 20 2>&1 | quiet \
  | tee "$OUT/match_tiles.txt" | grep -v "^vim.*one launch\|^vim.*two kernels" ; grep "DIFFERS" "$OUT/match_tiles.txt"
echo "== 3. bench ($(left) s left)"
PYTHONPATH=src timeout 150 python3 -m rmeeto bench $MODELS --preset paper --modes eager,cudagraph \
  --json "$OUT/bench_new.json" 2>&1 | quiet | tee "$OUT/bench_new.txt"
if [ -n "${OLD:-}" ]; then
  echo "== 3b. bench old ($(left) s left)"
  PYTHONPATH=$OLD/src timeout 100 python3 -m rmeeto bench $MODELS --preset paper --modes cudagraph \
    --json "$OUT/bench_old.json" 2>&1 | quiet | tee "$OUT/bench_old.txt"
fi
L=$(left); echo "== 4. profiles ($L s left)"
[ "$L" -gt 60 ] && PYTHONPATH=src timeout $(( L / 2 )) python3 benchmarks/profile_gpu.py --what inference \
  --variants unmerged,merged --modes cudagraph --rows 40 2>&1 | quiet > "$OUT/profile_s.txt"; grep "^#" "$OUT/profile_s.txt"
for tree in src ${OLD:+$OLD/src}; do
  L=$(left); [ "$L" -gt 25 ] || break
  PYTHONPATH=$tree timeout $(( L - 10 )) python3 benchmarks/profile_gpu.py --model vim_tiny_patch16_224 \
    --what inference --variants unmerged,merged --modes eager --rows 0 2>&1 | quiet | grep "^#" \
    | sed "s|^|[$tree] |" | tee -a "$OUT/profile_ti_eager.txt"
done

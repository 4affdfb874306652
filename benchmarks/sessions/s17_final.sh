#!/usr/bin/env bash
# Seventeenth session's last device call (one GPU), the final tree: every GPU test; eager unmerged vs merged with the
# prepared blocks on and off, interleaved; rmeeto bench Vim-Ti/S/B eager and graphed (alternating rounds); merged
# and unmerged Vim-S profiled with the prepared blocks off (before) and on (after); the training step.
#   bash benchmarks/sessions/s17_final.sh
set -uo pipefail
OUT=${OUT:-out/s17d}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s); left() { echo $(( ${BUDGET_S:-585} - ($(date +%s) - T0) )); }
quiet() { grep -v "Warning\|warn(\|return Variable\|_warn_once\|^$" ; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | head -1
MODELS="vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224"
echo "== 1. every GPU test"
PYTHONPATH=src OUT="$OUT/tests" WORKERS=16 LIMIT_S=${TEST_S:-325} bash benchmarks/gpu_tests.sh tests 2>&1 | tail -12
pkill -f "pytest" 2>/dev/null; sleep 3  # xdist workers outlive a timed-out run and would load the host
grep -E "PASSED|FAILED|ERROR" "$OUT/tests/log.txt" | sed 's/^\[gw[0-9]*\] *\[ *[0-9]*%\] *//' | sort > "$OUT/tests_results.txt"
tar -czf "$OUT/tests.tgz" -C "$OUT" tests && rm -rf "$OUT/tests"
echo "== 2. eager, interleaved, prepared blocks on / off ($(left) s left)"
PYTHONPATH=src timeout 70 python3 benchmarks/eager_ab.py --switch plan --rounds 5 2>&1 | quiet | tee "$OUT/eager_ab.txt"
echo "== 3. bench, alternating rounds ($(left) s left)"
PYTHONPATH=src timeout 90 python3 -m rmeeto bench $MODELS --preset paper --modes eager,cudagraph \
  --json "$OUT/bench.json" 2>&1 | quiet | tee "$OUT/bench.txt" | grep "eager\|cudagraph"
echo "== 4. profile, Vim-S, prepared blocks off / on ($(left) s left)"
for plan in 0 1; do
  L=$(left); [ "$L" -gt 60 ] || break
  RMEETO_FUSED_PLAN=$plan PYTHONPATH=src timeout 40 python3 benchmarks/profile_gpu.py \
    --model vim_small_patch16_224 --what inference --modes eager,cudagraph --rows 8 2>&1 | quiet \
    > "$OUT/profile_plan$plan.txt"; grep "^# vim" "$OUT/profile_plan$plan.txt" | cut -c1-250
done
L=$(left); echo "== 5. training step ($L s left)"
[ "$L" -gt 30 ] && PYTHONPATH=src timeout $(( L - 5 )) python3 -m rmeeto bench vim_small_patch16_224 --train \
  --no-inference --modes cudagraph --train-repeats 4 2>&1 | quiet | tee "$OUT/train.txt" | tail -2
echo "done, $(left) s left"

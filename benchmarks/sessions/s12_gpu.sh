#!/usr/bin/env bash
# Twelfth session's device call (one GPU): the merge + add + RMSNorm fold (issue 14).
#   bash benchmarks/sessions/s12_gpu.sh
# 1. the GPU tests of the merge, the whole model and training (fold bit-equal to merge-then-norm; 3e40c6d's
#    capture log on a GPU);
# 2. `rmeeto bench` Vim-Ti/S/B, eager and graphed, with the fold on and off (RMEETO_FUSED_MERGE_NORM),
#    alternated ON, OFF, ON, OFF so drift hits both alike;
# 3. in the time left, the profile of Vim-S inference, graphed, fold on.
# Everything is under $OUT.
set -uo pipefail
OUT=${OUT:-out/s12}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-src}
T0=$(date +%s); left() { echo $(( ${BUDGET_S:-575} - ($(date +%s) - T0) )); }
quiet() { grep -v "Warning\|warn(\|return Variable\|_warn_once\|^$" ; }
nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tee "$OUT/gpu.txt"
echo "== 1. GPU tests"
OUT="$OUT/tests" WORKERS=16 LIMIT_S=${TESTS_S:-210} bash benchmarks/gpu_tests.sh ${TESTS:-tests/ops/test_merge_fused.py \
  tests/models/test_gpu_model.py tests/train/test_gpu_train.py} 2>&1 | tail -12
MODELS=${MODELS:-vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224}
for round in 1 2; do
  for fold in 1 0; do
    L=$(left); echo "== 2. round $round, fold $fold ($L s left)"
    [ "$L" -gt 100 ] || break 2
    RMEETO_FUSED_MERGE_NORM=$fold timeout $(( L - 60 )) python3 -m rmeeto bench $MODELS --preset paper \
      --modes ${MODES:-eager,cudagraph} --json "$OUT/bench_f${fold}_r${round}.json" 2>&1 | quiet | tee "$OUT/bench_f${fold}_r${round}.txt"
  done
done
L=$(left); echo "== 3. profile ($L s left)"
[ "$L" -gt 50 ] && timeout $(( L - 10 )) python3 benchmarks/profile_gpu.py --what inference \
  --variants merged --modes cudagraph --rows 16 2>&1 | quiet | tee "$OUT/profile.txt" | tail -24
(cd "$OUT" && tar czf /tmp/s12.tgz . && rm -rf ./* && mv /tmp/s12.tgz .)

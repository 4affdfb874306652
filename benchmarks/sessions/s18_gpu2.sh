#!/usr/bin/env bash
# Eighteenth session's second device call (one GPU): the merge + norm kernel over input rows against the one over
# output slots (the tree before it, .ab/old/src: `git archive <commit> src | tar -x -C .ab/old`), per kernel and in
# whole graphed Vim-S (old / new alternating); the matching kernel's loop settings; the merge GPU tests.
# Step 2 ran a sweep (match_stages_gpu.py) over MATCH_CONFIG overrides of software pipelining that every setting
# lost; the overrides and the sweep were not kept (results/s18/call2_match_stages.txt), so step 2 now fails fast.
#   bash benchmarks/sessions/s18_gpu2.sh
set -uo pipefail
OUT=${OUT:-out/s18b}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s); left() { echo $(( ${BUDGET_S:-575} - ($(date +%s) - T0) )); }
quiet() { grep -v "Warning\|warn(\|return Variable\|_warn_once\|^$" ; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | head -1
echo "== 1. merge + norm kernel, old (output slots) then new (input rows)"
for tree in .ab/old/src src; do
  echo "-- $tree"; PYTHONPATH=$tree:benchmarks timeout 100 python3 benchmarks/bench_merge_norm_gpu.py --reps 20 2>&1 | quiet
done | tee "$OUT/merge_norm.txt"
echo "== 2. matching loop settings ($(left) s left)"
PYTHONPATH=src:benchmarks timeout 150 python3 benchmarks/match_stages_gpu.py \
  --shapes vim_ti_197,vim_s_197,vim_s_142,vim_s_98 2>&1 | quiet | tee "$OUT/match_stages.txt"
echo "== 3. graphed Vim-S, old / new tree alternating ($(left) s left)"
for tree in .ab/old/src src .ab/old/src src; do
  L=$(left); [ "$L" -gt 150 ] || break
  echo "-- $tree: $(PYTHONPATH=$tree timeout 60 python3 -m rmeeto bench vim_small_patch16_224 --preset paper \
    --modes cudagraph --rounds 3 2>&1 | grep cudagraph | tail -1)"
done | tee "$OUT/bench_ab.txt"
L=$(left); echo "== 4. merge GPU tests ($L s left)"
PYTHONPATH=src OUT="$OUT/tests" WORKERS=16 LIMIT_S=$(( L - 15 )) bash benchmarks/gpu_tests.sh \
  tests/ops/test_merge_fused.py tests/ops/test_gpu_plan.py tests/models/test_gpu_model.py 2>&1 | tail -8
pkill -f "pytest" 2>/dev/null
cp "$OUT/tests/log.txt" "$OUT/tests_log.txt"; rm -rf "$OUT/tests"
echo "done, $(left) s left"

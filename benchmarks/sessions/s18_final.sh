#!/usr/bin/env bash
# Eighteenth session's last device call (one GPU), the final tree: the merge + norm kernel over input rows in its
# chosen tiles (Vim-Ti / S / B widths); graphed Vim-S, the tree before it (.ab/old/src: `git archive df0619e src |
# tar -x -C .ab/old`) and the final one alternating; rmeeto bench Vim-Ti / S / B eager and graphed (alternating
# rounds); the GPU tests of the merge, the prepared blocks and the whole models.
#   bash benchmarks/sessions/s18_final.sh
set -uo pipefail
OUT=${OUT:-out/s18c}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s); left() { echo $(( ${BUDGET_S:-580} - ($(date +%s) - T0) )); }
quiet() { grep -v "Warning\|warn(\|return Variable\|_warn_once\|^$" ; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | head -1
echo "== 1. GPU tests: merge, prepared blocks, whole models"
PYTHONPATH=src OUT="$OUT/tests" WORKERS=16 LIMIT_S=200 bash benchmarks/gpu_tests.sh \
  tests/ops/test_merge_fused.py tests/ops/test_gpu_plan.py tests/ops/test_gpu_launch.py tests/ops/test_merge_host.py \
  tests/models/test_gpu_model.py 2>&1 | tail -8
pkill -f "pytest" 2>/dev/null; sleep 3
cp "$OUT/tests/log.txt" "$OUT/tests_log.txt"; rm -rf "$OUT/tests"
echo "== 2. merge + norm kernel ($(left) s left)"
PYTHONPATH=src:benchmarks timeout 70 python3 benchmarks/bench_merge_norm_gpu.py --reps 20 2>&1 | quiet \
  | tee "$OUT/merge_norm.txt" | grep "plain\|chosen"
echo "== 3. graphed Vim-S, before / after alternating ($(left) s left)"
for tree in .ab/old/src src .ab/old/src src; do
  echo "-- $tree: $(PYTHONPATH=$tree timeout 60 python3 -m rmeeto bench vim_small_patch16_224 --preset paper \
    --modes cudagraph --rounds 3 2>&1 | grep cudagraph | tail -1)"
done | tee "$OUT/bench_ab.txt"
L=$(left); echo "== 4. bench, alternating rounds ($L s left)"
PYTHONPATH=src timeout $(( L - 5 )) python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 \
  vim_base_patch16_224 --preset paper --modes eager,cudagraph --json "$OUT/bench.json" 2>&1 | quiet \
  | tee "$OUT/bench.txt" | grep "eager\|cudagraph"
echo "done, $(left) s left"

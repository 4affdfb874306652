#!/usr/bin/env bash
# Fifteenth session's last device call (one GPU), the final tree: the merge, embed and whole-model GPU tests;
# the merge + norm tiles; `rmeeto bench` Vim-Ti/S/B (eager and graphed, then graphed with the session's old
# tree, then graphed again); the Vim-S graphed profile; the training step.
#   OLD=<dir holding the session's starting tree's src/> bash benchmarks/sessions/s15_final.sh
set -uo pipefail
OUT=${OUT:-out/s15c}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s); left() { echo $(( ${BUDGET_S:-540} - ($(date +%s) - T0) )); }
quiet() { grep -v "Warning\|warn(\|return Variable\|_warn_once\|^$" ; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | head -1
MODELS="vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224"
echo "== 1. GPU tests"
PYTHONPATH=src OUT="$OUT/tests" WORKERS=16 LIMIT_S=170 bash benchmarks/gpu_tests.sh tests/ops/test_gpu_embed.py \
  tests/ops/test_merge_fused.py tests/ops/test_merge_host.py tests/test_merge.py tests/models/test_gpu_model.py 2>&1 | tail -6
tar -czf "$OUT/tests.tgz" -C "$OUT" tests && rm -rf "$OUT/tests"
echo "== 2. merge + norm tiles ($(left) s left)"
(cd benchmarks && PYTHONPATH=../src timeout 60 python3 bench_merge_norm_gpu.py --reps 20 2>&1 | quiet > "$OUT/merge_norm_tiles.txt")
grep "chosen\|plain" "$OUT/merge_norm_tiles.txt"
echo "== 3. bench ($(left) s left)"
PYTHONPATH=src timeout 120 python3 -m rmeeto bench $MODELS --preset paper --modes eager,cudagraph \
  --json "$OUT/bench.json" 2>&1 | quiet | tee "$OUT/bench.txt"
echo "== 3b. bench old ($(left) s left)"
PYTHONPATH=$OLD/src timeout 90 python3 -m rmeeto bench $MODELS --preset paper --modes cudagraph 2>&1 | quiet \
  | tee "$OUT/bench_old.txt" | grep "cudagraph"
echo "== 3c. bench again ($(left) s left)"
PYTHONPATH=src timeout 90 python3 -m rmeeto bench $MODELS --preset paper --modes cudagraph 2>&1 | quiet \
  | tee "$OUT/bench_again.txt" | grep "cudagraph"
L=$(left); echo "== 4. profile ($L s left)"
[ "$L" -gt 60 ] && PYTHONPATH=src timeout 60 python3 benchmarks/profile_gpu.py --what inference \
  --variants unmerged,merged --modes cudagraph --rows 40 2>&1 | quiet > "$OUT/profile_s.txt"; grep "^#" "$OUT/profile_s.txt"
L=$(left); echo "== 5. training step ($L s left)"
[ "$L" -gt 50 ] && PYTHONPATH=src timeout $(( L - 5 )) python3 -m rmeeto bench vim_small_patch16_224 --train \
  --no-inference --modes cudagraph --train-repeats 6 2>&1 | quiet | tee "$OUT/train.txt"

#!/usr/bin/env bash
# Sixteenth session's second device call (one GPU): the proj kernel's two tilings over token counts; the match
# kernel with 16 warps; the proj tests; the Vim-S graphed profile; `rmeeto bench` graphed and the training step.
#   bash benchmarks/sessions/s16_gpu2.sh
set -uo pipefail
OUT=${OUT:-out/s16b}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s); left() { echo $(( ${BUDGET_S:-560} - ($(date +%s) - T0) )); }
quiet() { grep -v "Warning\|warn(\|return Variable\|_warn_once\|^$" ; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | head -1
MODELS="vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224"
echo "== 1. proj tilings over token counts"
(cd benchmarks && PYTHONPATH=../src timeout 100 python3 bench_proj_gpu.py --reps 20 2>&1 | quiet | tee "$OUT/proj.txt")
echo "== 2. match kernel warps ($(left) s left)"
PYTHONPATH=src timeout 120 python3 benchmarks/bench_merge_gpu.py --match-tiles --only-sweeps --reps 20 \
  --tiles "128,128,32,8,2,64;128,128,32,16,2,64;128,128,64,16,2,64;64,64,32,8,4,64;64,64,32,16,4,64;128,128,32,8,2,128;128,128,32,16,2,128" \
  2>&1 | quiet > "$OUT/match_warps.txt"; grep -v "^$" "$OUT/match_warps.txt" | grep "fastest\|two kernels"
echo "== 3. tests ($(left) s left)"
PYTHONPATH=src OUT="$OUT/tests" WORKERS=8 LIMIT_S=120 bash benchmarks/gpu_tests.sh tests/ops/test_gpu_proj.py 2>&1 | tail -6
tar -czf "$OUT/tests.tgz" -C "$OUT" tests && rm -rf "$OUT/tests"
echo "== 4. bench graphed ($(left) s left)"
PYTHONPATH=src timeout 80 python3 -m rmeeto bench $MODELS --preset paper --modes cudagraph 2>&1 | quiet \
  | tee "$OUT/bench.txt" | grep "cudagraph"
echo "== 5. training step ($(left) s left)"
PYTHONPATH=src timeout 100 python3 -m rmeeto bench vim_small_patch16_224 --train --no-inference --modes cudagraph \
  --train-repeats 6 2>&1 | quiet | tee "$OUT/train.txt" | tail -4
L=$(left); echo "== 6. profile ($L s left)"
[ "$L" -gt 50 ] && PYTHONPATH=src timeout $(( L - 5 )) python3 benchmarks/profile_gpu.py --what inference \
  --variants unmerged,merged --modes cudagraph --rows 40 2>&1 | quiet > "$OUT/profile_s.txt"; grep "^#" "$OUT/profile_s.txt"
echo "done, $(left) s left"

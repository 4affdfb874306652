#!/usr/bin/env bash
# Nineteenth session's first device call (one GPU): the GPU tests of the plans, launcher, merge and whole models
# (session 18's CPU-only mends and the compiled inference ops); then torch.compile as its own mode beside eager
# and graphed (rmeeto bench, alternating rounds), and a profile of compiled Vim-S (launches, GPU busy share).
#   bash benchmarks/sessions/s19_gpu1.sh
set -uo pipefail
OUT=${OUT:-out/s19a}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s); left() { echo $(( ${BUDGET_S:-580} - ($(date +%s) - T0) )); }
quiet() { grep -v "Warning\|warn(\|return Variable\|_warn_once\|^$" ; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | head -1
echo "== 1. GPU tests: plans, launcher, merge, whole models"
PYTHONPATH=src OUT="$OUT/tests" WORKERS=16 LIMIT_S=200 bash benchmarks/gpu_tests.sh \
  tests/ops/test_gpu_plan.py tests/ops/test_gpu_launch.py tests/ops/test_merge_fused.py \
  tests/models/test_gpu_model.py 2>&1 | tail -12
pkill -f "pytest" 2>/dev/null; sleep 3
cp "$OUT/tests/log.txt" "$OUT/tests_log.txt"; rm -rf "$OUT/tests"
echo "== 2. Vim-S: eager, compile, cudagraph, compile+cudagraph ($(left) s left)"
PYTHONPATH=src timeout 200 python3 -m rmeeto bench vim_small_patch16_224 --preset paper \
  --modes eager,compile,cudagraph,compile+cudagraph --rounds 3 --json "$OUT/bench_s.json" 2>&1 | quiet \
  | tee "$OUT/bench_s.txt" | grep -i "eager\|compile\|cudagraph\|error"
L=$(left); echo "== 3. Vim-Ti, B: eager, compile, cudagraph ($L s left)"
PYTHONPATH=src timeout $(( L - 60 )) python3 -m rmeeto bench vim_tiny_patch16_224 vim_base_patch16_224 \
  --preset paper --modes eager,compile,cudagraph --rounds 3 --json "$OUT/bench_tb.json" 2>&1 | quiet \
  | tee "$OUT/bench_tb.txt" | grep -i "eager\|compile\|cudagraph\|error"
L=$(left); echo "== 4. profile, compiled Vim-S ($L s left)"
PYTHONPATH=src:benchmarks timeout $(( L - 5 )) python3 benchmarks/profile_gpu.py --model vim_small_patch16_224 \
  --what inference --variants unmerged,merged --modes compile 2>&1 | quiet | tee "$OUT/profile_compile.txt" | tail -30
echo "done, $(left) s left"

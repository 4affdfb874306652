#!/usr/bin/env bash
# Nineteenth session's second device call (one GPU): where compiled Vim-S spends its host time (cProfile at
# batch 1, compiled and eager; the ops' registration A/B), compile and compile+cudagraph timed, and the GPU tests call 1 left unfinished.
#   bash benchmarks/s19_gpu2.sh
set -uo pipefail
OUT=${OUT:-out/s19b}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s); left() { echo $(( ${BUDGET_S:-580} - ($(date +%s) - T0) )); }
quiet() { grep -v "Warning\|warn(\|return Variable\|_warn_once\|^$" ; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | head -1
echo "== 1. host profile, compiled and eager Vim-S, batch 1"
PYTHONPATH=src timeout 120 python3 benchmarks/host_profile_gpu.py --models vim_small_patch16_224 --compile \
  --calls 20 --rows 40 2>&1 | quiet > "$OUT/host_compile.txt"; grep "^#" "$OUT/host_compile.txt"
PYTHONPATH=src timeout 60 python3 benchmarks/host_profile_gpu.py --models vim_small_patch16_224 --variants merged \
  --calls 20 --rows 40 2>&1 | quiet > "$OUT/host_eager.txt"; grep "^#" "$OUT/host_eager.txt"
echo "== 1b. host time by op registration ($(left) s left)"
PYTHONPATH=src timeout 150 python3 benchmarks/compile_host_ab.py --calls 20 2>&1 | quiet | tee "$OUT/host_ab.txt" \
  | grep "round\|#"
echo "== 2. Vim-S compile, compile+cudagraph ($(left) s left)"
PYTHONPATH=src timeout 150 python3 -m rmeeto bench vim_small_patch16_224 --preset paper \
  --modes compile,compile+cudagraph --rounds 3 --json "$OUT/bench_s.json" 2>&1 | quiet \
  | tee "$OUT/bench_s.txt" | grep -i "eager\|compile\|cudagraph\|error"
L=$(left); echo "== 3. GPU tests left unfinished by call 1 ($L s left)"
PYTHONPATH=src OUT="$OUT/tests" WORKERS=16 LIMIT_S=$(( L - 15 )) bash benchmarks/gpu_tests.sh \
  tests/ops/test_merge_fused.py tests/models/test_gpu_model.py tests/ops/test_gpu_launch.py 2>&1 | tail -12
pkill -f "pytest" 2>/dev/null; sleep 2
cp "$OUT/tests/log.txt" "$OUT/tests_log.txt"; rm -rf "$OUT/tests"
echo "done, $(left) s left"

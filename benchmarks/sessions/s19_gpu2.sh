#!/usr/bin/env bash
# Nineteenth session's second device call (one GPU): where compiled Vim-S spends its host time (cProfile at
# batch 1, compiled and eager), the compiled modes timed beside eager (the ops now plain Library definitions run
# with the frame hook off, a block one op), and the GPU tests call 1 left unfinished.
#   bash benchmarks/sessions/s19_gpu2.sh
set -uo pipefail
OUT=${OUT:-out/s19b}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s); left() { echo $(( ${BUDGET_S:-580} - ($(date +%s) - T0) )); }
quiet() { grep -v "Warning\|warn(\|return Variable\|_warn_once\|^$" ; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | head -1
echo "== 1. host profile, compiled and eager Vim-S, batch 1"
PYTHONPATH=src timeout 90 python3 benchmarks/host_profile_gpu.py --models vim_small_patch16_224 --compile \
  --calls 20 --rows 30 2>&1 | quiet > "$OUT/host_compile.txt"; grep "^#" "$OUT/host_compile.txt"
PYTHONPATH=src timeout 40 python3 benchmarks/host_profile_gpu.py --models vim_small_patch16_224 --variants merged \
  --calls 20 --rows 30 2>&1 | quiet > "$OUT/host_eager.txt"; grep "^#" "$OUT/host_eager.txt"
echo "== 2. Vim-S eager, compile, compile+cudagraph ($(left) s left)"
PYTHONPATH=src timeout 150 python3 -m rmeeto bench vim_small_patch16_224 --preset paper \
  --modes eager,compile,compile+cudagraph --rounds 3 --json "$OUT/bench_s.json" 2>&1 | quiet \
  | tee "$OUT/bench_s.txt" | grep -i "eager\|compile\|cudagraph\|error"
echo "== 2b. Vim-Ti, B eager, compile ($(left) s left)"
PYTHONPATH=src timeout 130 python3 -m rmeeto bench vim_tiny_patch16_224 vim_base_patch16_224 --preset paper \
  --modes eager,compile --rounds 3 --json "$OUT/bench_tb.json" 2>&1 | quiet \
  | tee "$OUT/bench_tb.txt" | grep -i "eager\|compile\|cudagraph\|error"
L=$(left); echo "== 3. GPU tests left unfinished by call 1 ($L s left)"
PYTHONPATH=src OUT="$OUT/tests" WORKERS=16 LIMIT_S=$(( L - 15 )) bash benchmarks/gpu_tests.sh \
  tests/ops/test_merge_fused.py tests/models/test_gpu_model.py tests/ops/test_gpu_launch.py 2>&1 | tail -12
pkill -f "pytest" 2>/dev/null; sleep 2
cp "$OUT/tests/log.txt" "$OUT/tests_log.txt"; rm -rf "$OUT/tests"
echo "done, $(left) s left"

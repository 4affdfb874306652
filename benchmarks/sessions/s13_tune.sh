#!/usr/bin/env bash
# Thirteenth session's second device call (one GPU): the scan forward's prefetch and tiles (issue 14).
#   OLD=<dir holding an older tree's src/ and old_scan.py> bash benchmarks/sessions/s13_tune.sh
# 1. the two-direction scan forward alone: shipped tile, prefetch flipped, old tree (benchmarks/scan_ab_gpu.py);
# 2. every forward tile candidate, then `rmeeto bench` Vim-Ti/S/B graphed with the fastest, in one process
#    (benchmarks/tuned_bench.py);
# 3. `rmeeto bench` of the old tree, graphed (before / after in one call);
# 4. the GPU tests of the scan (every tile candidate included), the two-direction scan and the whole model.
set -uo pipefail
OUT=${OUT:-out/s13}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s); left() { echo $(( ${BUDGET_S:-570} - ($(date +%s) - T0) )); }
quiet() { grep -v "Warning\|warn(\|return Variable\|_warn_once\|^$" ; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | head -1 | tee "$OUT/gpu.txt"
MODELS=${MODELS:-vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224}
echo "== 1. kernel A/B"
PYTHONPATH=src timeout 120 python3 benchmarks/scan_ab_gpu.py ${OLD:+--old $OLD/old_scan.py} 2>&1 | quiet | tee "$OUT/scan_ab.txt"
echo "== 2. tiles + bench ($(left) s left)"
PYTHONPATH=src timeout 200 python3 benchmarks/tuned_bench.py -- bench $MODELS --preset paper --modes cudagraph \
  --json "$OUT/bench_tuned.json" 2>&1 | quiet | tee "$OUT/bench_tuned.txt"
if [ -n "${OLD:-}" ]; then
  echo "== 3. bench old ($(left) s left)"
  PYTHONPATH=$OLD/src timeout 120 python3 -m rmeeto bench $MODELS --preset paper --modes cudagraph \
    --json "$OUT/bench_old.json" 2>&1 | quiet | tee "$OUT/bench_old.txt"
fi
L=$(left); echo "== 4. GPU tests ($L s left)"
PYTHONPATH=src OUT="$OUT/tests" WORKERS=16 LIMIT_S=$(( L - 15 )) bash benchmarks/gpu_tests.sh ${TESTS:-tests/ops/test_gpu_scan.py \
  tests/ops/test_gpu_bidir.py tests/ops/test_gpu_scan_branches.py tests/models/test_gpu_model.py} 2>&1 | tail -8

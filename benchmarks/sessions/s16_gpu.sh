#!/usr/bin/env bash
# Sixteenth session's first device call (one GPU): the x_proj + dt_proj kernel's tilings against cuBLAS; the
# tests around it; eager speed interleaved with the kernel on and off; `rmeeto bench` graphed with it off and on.
#   bash benchmarks/sessions/s16_gpu.sh
set -uo pipefail
OUT=${OUT:-out/s16a}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s); left() { echo $(( ${BUDGET_S:-560} - ($(date +%s) - T0) )); }
quiet() { grep -v "Warning\|warn(\|return Variable\|_warn_once\|^$" ; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | head -1
MODELS="vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224"
echo "== 1. proj kernel tilings"
(cd benchmarks && PYTHONPATH=../src timeout 150 python3 bench_proj_gpu.py --sweep --reps 20 2>&1 | quiet \
  | tee "$OUT/proj_tiles.txt" | grep -v "^   kernel {")
echo "== 2. tests ($(left) s left)"
PYTHONPATH=src OUT="$OUT/tests" WORKERS=16 LIMIT_S=170 bash benchmarks/gpu_tests.sh tests/ops/test_gpu_proj.py \
  tests/models tests/ops/test_merge_fused.py tests/ops/test_gpu_embed.py tests/ops/test_gpu_launch.py 2>&1 | tail -12
tar -czf "$OUT/tests.tgz" -C "$OUT" tests && rm -rf "$OUT/tests"
echo "== 3. eager, interleaved ($(left) s left)"
PYTHONPATH=src timeout 140 python3 benchmarks/eager_ab.py --switch proj --rounds 5 2>&1 | quiet | tee "$OUT/eager_ab.txt"
echo "== 4. graphed, proj off then on ($(left) s left)"
for on in 0 1; do
  RMEETO_FUSED_PROJ=$on PYTHONPATH=src timeout 75 python3 -m rmeeto bench $MODELS --preset paper --modes cudagraph \
    2>&1 | quiet | tee "$OUT/bench_proj$on.txt" | grep "cudagraph"
done
echo "done, $(left) s left"

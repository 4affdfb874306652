#!/usr/bin/env bash
# Seventeenth session, second device call (one GPU): the prepared mixers (rmeeto.ops.triton.mixer) and the projection
# tile table: their GPU tests with the projection / model / launch tests; eager host time per forward and its
# profile; eager unmerged vs merged with the plan on and off, interleaved; graphed Vim-S / B with session 16's tile
# rule against the new table, interleaved.
#   bash benchmarks/sessions/s17_gpu2.sh
set -uo pipefail
OUT=${OUT:-out/s17b}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s); left() { echo $(( ${BUDGET_S:-560} - ($(date +%s) - T0) )); }
quiet() { grep -v "Warning\|warn(\|return Variable\|_warn_once\|^$" ; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | head -1
echo "== 1. plan, projection, launch and model GPU tests"
PYTHONPATH=src OUT="$OUT/tests" WORKERS=16 LIMIT_S=170 bash benchmarks/gpu_tests.sh tests/ops/test_gpu_plan.py \
  tests/ops/test_gpu_proj.py tests/ops/test_gpu_launch.py tests/models/test_gpu_model.py 2>&1 | tail -8
pkill -f "pytest" 2>/dev/null; sleep 2
cp "$OUT/tests/log.txt" "$OUT/tests_log.txt"; rm -rf "$OUT/tests"
echo "== 2. host profile ($(left) s left)"
PYTHONPATH=src timeout 70 python3 benchmarks/host_profile_gpu.py --models vim_tiny_patch16_224 --rows 30 2>&1 | quiet \
  > "$OUT/host_profile.txt"; grep "^#" "$OUT/host_profile.txt"
echo "== 3. eager, interleaved, plan on / off ($(left) s left)"
PYTHONPATH=src timeout 170 python3 benchmarks/eager_ab.py --switch plan --rounds 5 2>&1 | quiet | tee "$OUT/eager_ab.txt"
L=$(left); echo "== 4. graphed, projection tiles ($L s left)"
[ "$L" -gt 40 ] && PYTHONPATH=src timeout $(( L - 10 )) python3 benchmarks/proj_tiles_ab.py --rounds 5 2>&1 | quiet \
  | tee "$OUT/proj_tiles_ab.txt"
echo "done, $(left) s left"

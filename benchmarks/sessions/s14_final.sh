#!/usr/bin/env bash
# Fourteenth session's last device call (one GPU), the final tree: the merge, bidir-scan and whole-model GPU
# tests; `rmeeto bench` Vim-Ti/S/B eager and graphed; the Vim-S graphed profile (unmerged, merged) and the
# Vim-Ti eager host time per forward.
#   bash benchmarks/sessions/s14_final.sh
set -uo pipefail
OUT=${OUT:-out/s14d}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s); left() { echo $(( ${BUDGET_S:-480} - ($(date +%s) - T0) )); }
quiet() { grep -v "Warning\|warn(\|return Variable\|_warn_once\|^$" ; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | head -1 | tee "$OUT/gpu.txt"
MODELS=${MODELS:-vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224}
echo "== 1. GPU tests"
PYTHONPATH=src OUT="$OUT/tests" WORKERS=16 LIMIT_S=170 bash benchmarks/gpu_tests.sh tests/ops/test_gpu_bidir.py \
  tests/ops/test_merge_fused.py tests/ops/test_merge_host.py tests/test_merge.py tests/models/test_gpu_model.py 2>&1 | tail -8
echo "== 2. bench ($(left) s left)"
PYTHONPATH=src timeout 150 python3 -m rmeeto bench $MODELS --preset paper --modes eager,cudagraph \
  --json "$OUT/bench.json" 2>&1 | quiet | tee "$OUT/bench.txt"
L=$(left); echo "== 3. profiles ($L s left)"
[ "$L" -gt 50 ] && PYTHONPATH=src timeout $(( L - 30 )) python3 benchmarks/profile_gpu.py --what inference \
  --variants unmerged,merged --modes cudagraph --rows 40 2>&1 | quiet > "$OUT/profile_s.txt"; grep "^#" "$OUT/profile_s.txt"
L=$(left); [ "$L" -gt 20 ] && PYTHONPATH=src timeout $(( L - 5 )) python3 benchmarks/profile_gpu.py \
  --model vim_tiny_patch16_224 --what inference --variants unmerged,merged --modes eager --rows 0 2>&1 | quiet \
  | grep "^#" | tee "$OUT/profile_ti_eager.txt"

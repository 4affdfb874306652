#!/usr/bin/env bash
# Thirteenth session's last device call (one GPU): the final tree against the session's starting tree.
#   OLD=<dir holding the starting tree's src/> bash benchmarks/sessions/s13_final.sh
# 1. `rmeeto bench` Vim-Ti/S/B, eager and graphed (this tree), then graphed with the old tree;
# 2. every GPU test (this tree);
# 3. in the time left, the profile of Vim-S inference, graphed, unmerged and merged.
set -uo pipefail
OUT=${OUT:-out/s13}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s); left() { echo $(( ${BUDGET_S:-560} - ($(date +%s) - T0) )); }
quiet() { grep -v "Warning\|warn(\|return Variable\|_warn_once\|^$" ; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | head -1 | tee "$OUT/gpu.txt"
MODELS=${MODELS:-vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224}
echo "== 1. bench"
PYTHONPATH=src timeout 150 python3 -m rmeeto bench $MODELS --preset paper --modes eager,cudagraph \
  --json "$OUT/bench_new.json" 2>&1 | quiet | tee "$OUT/bench_new.txt"
if [ -n "${OLD:-}" ]; then
  echo "== 1b. bench old ($(left) s left)"
  PYTHONPATH=$OLD/src timeout 100 python3 -m rmeeto bench $MODELS --preset paper --modes cudagraph \
    --json "$OUT/bench_old.json" 2>&1 | quiet | tee "$OUT/bench_old.txt"
fi
L=$(left); echo "== 2. GPU tests ($L s left)"
PYTHONPATH=src OUT="$OUT/tests" WORKERS=16 LIMIT_S=$(( L - 50 < 260 ? L - 50 : 260 )) bash benchmarks/gpu_tests.sh ${TESTS:-tests} 2>&1 | tail -14
L=$(left); echo "== 3. profile ($L s left)"
[ "$L" -gt 40 ] && PYTHONPATH=src timeout $(( L - 5 )) python3 benchmarks/profile_gpu.py --what inference \
  --variants unmerged,merged --modes cudagraph --rows 14 2>&1 | quiet > "$OUT/profile.txt"; tail -40 "$OUT/profile.txt"

#!/usr/bin/env bash
# Fifteenth session's last device call (one GPU), the final tree: every GPU test; `rmeeto bench` Vim-Ti/S/B eager
# and graphed, graphed with the session's starting tree, graphed again; the Vim-S graphed profile.
#   OLD=<dir holding the session's starting tree's src/> bash benchmarks/sessions/s15_last.sh
set -uo pipefail
OUT=${OUT:-out/s15d}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s); left() { echo $(( ${BUDGET_S:-540} - ($(date +%s) - T0) )); }
quiet() { grep -v "Warning\|warn(\|return Variable\|_warn_once\|^$" ; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | head -1
MODELS="vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224"
echo "== 1. every GPU test"
PYTHONPATH=src OUT="$OUT/tests" WORKERS=16 LIMIT_S=320 bash benchmarks/gpu_tests.sh tests 2>&1 | tail -8
tar -czf "$OUT/tests.tgz" -C "$OUT" tests && rm -rf "$OUT/tests"
echo "== 2. bench ($(left) s left)"
PYTHONPATH=src timeout 120 python3 -m rmeeto bench $MODELS --preset paper --modes eager,cudagraph \
  --json "$OUT/bench.json" 2>&1 | quiet | tee "$OUT/bench.txt"
echo "== 2b. bench old ($(left) s left)"
PYTHONPATH=$OLD/src timeout 90 python3 -m rmeeto bench $MODELS --preset paper --modes cudagraph 2>&1 | quiet \
  | tee "$OUT/bench_old.txt" | grep "cudagraph"
echo "== 2c. bench again ($(left) s left)"
PYTHONPATH=src timeout 90 python3 -m rmeeto bench $MODELS --preset paper --modes cudagraph 2>&1 | quiet \
  | tee "$OUT/bench_again.txt" | grep "cudagraph"
L=$(left); echo "== 3. profile ($L s left)"
[ "$L" -gt 50 ] && PYTHONPATH=src timeout $(( L - 5 )) python3 benchmarks/profile_gpu.py --what inference \
  --variants unmerged,merged --modes cudagraph --rows 40 2>&1 | quiet > "$OUT/profile_s.txt"; grep "^#" "$OUT/profile_s.txt"

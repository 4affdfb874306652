#!/usr/bin/env bash
# Sixteenth session's last device call (one GPU), the final tree: every GPU test; `rmeeto bench` Vim-Ti/S/B eager
# and graphed; eager interleaved (benchmarks/eager_ab.py); the training step; compiled Vim-S if time is left.
#   bash benchmarks/sessions/s16_final.sh
set -uo pipefail
OUT=${OUT:-out/s16d}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s); left() { echo $(( ${BUDGET_S:-570} - ($(date +%s) - T0) )); }
quiet() { grep -v "Warning\|warn(\|return Variable\|_warn_once\|^$" ; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | head -1
MODELS="vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224"
echo "== 1. every GPU test"
PYTHONPATH=src OUT="$OUT/tests" WORKERS=16 LIMIT_S=320 bash benchmarks/gpu_tests.sh tests 2>&1 | tail -10
pkill -f "pytest" 2>/dev/null; sleep 3  # xdist workers outlive a timed-out run and would load the host
tar -czf "$OUT/tests.tgz" -C "$OUT" tests && rm -rf "$OUT/tests"
echo "== 2. bench ($(left) s left)"
PYTHONPATH=src timeout 110 python3 -m rmeeto bench $MODELS --preset paper --modes eager,cudagraph \
  --json "$OUT/bench.json" 2>&1 | quiet | tee "$OUT/bench.txt" | grep "eager\|cudagraph"
echo "== 3. eager, interleaved ($(left) s left)"
PYTHONPATH=src timeout 80 python3 benchmarks/eager_ab.py --rounds 6 2>&1 | quiet | tee "$OUT/eager_ab.txt"
L=$(left); echo "== 4. training step ($L s left)"
[ "$L" -gt 70 ] && PYTHONPATH=src timeout 60 python3 -m rmeeto bench vim_small_patch16_224 --train --no-inference \
  --modes cudagraph --train-repeats 6 2>&1 | quiet | tee "$OUT/train.txt" | tail -2
L=$(left); echo "== 5. compiled Vim-S ($L s left)"
[ "$L" -gt 60 ] && PYTHONPATH=src timeout $(( L - 10 )) python3 -m rmeeto bench vim_small_patch16_224 --preset paper \
  --modes compile 2>&1 | quiet | tee "$OUT/compile.txt" | tail -2
echo "done, $(left) s left"

#!/usr/bin/env bash
# Seventeenth session, third device call (one GPU): graphed Vim with the batch split over two streams; the
# projection tiles in whole graphed models (plans remade per rule); rmeeto bench Vim-Ti/S/B eager and graphed in
# alternating rounds; merged Vim-S profiled eager and graphed with the prepared mixers off (before) and on (after).
#   bash benchmarks/sessions/s17_gpu3.sh
set -uo pipefail
OUT=${OUT:-out/s17c}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s); left() { echo $(( ${BUDGET_S:-420} - ($(date +%s) - T0) )); }
quiet() { grep -v "Warning\|warn(\|return Variable\|_warn_once\|^$" ; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | head -1
MODELS="vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224"
echo "== 1. bench, alternating rounds"
PYTHONPATH=src timeout 130 python3 -m rmeeto bench $MODELS --preset paper --modes eager,cudagraph \
  --json "$OUT/bench.json" 2>&1 | quiet | tee "$OUT/bench.txt" | grep "eager\|cudagraph"
echo "== 2. graphed, batch over two streams ($(left) s left)"
PYTHONPATH=src timeout 80 python3 benchmarks/graph_streams_ab.py --models vim_small_patch16_224,vim_tiny_patch16_224 \
  --rounds 4 2>&1 | quiet | tee "$OUT/streams.txt"
echo "== 3. graphed, projection tiles ($(left) s left)"
PYTHONPATH=src timeout 80 python3 benchmarks/proj_tiles_ab.py --rounds 4 2>&1 | quiet | tee "$OUT/proj_tiles_ab.txt"
echo "== 4. profile, merged Vim-S, prepared mixers off / on ($(left) s left)"
for plan in 0 1; do
  L=$(left); [ "$L" -gt 25 ] || break
  RMEETO_FUSED_PLAN=$plan PYTHONPATH=src timeout $(( L < 70 ? L - 5 : 65 )) python3 benchmarks/profile_gpu.py \
    --model vim_small_patch16_224 --what inference --modes eager,cudagraph --rows 8 2>&1 | quiet \
    > "$OUT/profile_plan$plan.txt"; grep "^# " "$OUT/profile_plan$plan.txt" | cut -c1-260
done
echo "done, $(left) s left"

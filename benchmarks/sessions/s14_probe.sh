#!/usr/bin/env bash
# Fourteenth session's last device call (one GPU), the final tree: the training step (merged Vim-S student +
# teacher, bf16, graphed) and Nsight Compute on the one-launch match kernel at Vim-S's first merging layer
# (summary sections, then per-SASS-instruction stall samples as CSV for reading offline).
#   bash benchmarks/sessions/s14_probe.sh
set -uo pipefail
OUT=${OUT:-out/s14e}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s); left() { echo $(( ${BUDGET_S:-400} - ($(date +%s) - T0) )); }
quiet() { grep -v "Warning\|warn(\|return Variable\|_warn_once\|^$" ; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | head -1 | tee "$OUT/gpu.txt"
echo "== 1. training step"
PYTHONPATH=src timeout 200 python3 -m rmeeto bench vim_small_patch16_224 --train --no-inference --modes cudagraph \
  --train-repeats 6 --json "$OUT/train.json" 2>&1 | quiet | tee "$OUT/train.txt" | tail -6
NCU="ncu --clock-control none --kernel-name regex:_match_kernel --launch-skip 3 --launch-count 1"
L=$(left); echo "== 2. ncu summary ($L s left)"
[ "$L" -gt 60 ] && PYTHONPATH=src timeout $(( L / 2 )) $NCU --section SpeedOfLight --section SchedulerStats \
  --section WarpStateStats --section Occupancy --section LaunchStats python3 benchmarks/match_once.py > "$OUT/ncu.txt" 2>&1
grep -E "Duration|Issue Slots Busy|No Eligible|Achieved Occupancy|Registers Per|Warp Cycles Per Issued|Stall|Memory Throughput" "$OUT/ncu.txt" | head -24
L=$(left); echo "== 3. ncu source ($L s left)"
[ "$L" -gt 40 ] && PYTHONPATH=src timeout $(( L - 10 )) $NCU --section SourceCounters --section WarpStateStats \
  --page source --print-source sass --csv python3 benchmarks/match_once.py > "$OUT/ncu_sass.csv" 2>&1
wc -l "$OUT/ncu_sass.csv"; head -c 600 "$OUT/ncu_sass.csv"

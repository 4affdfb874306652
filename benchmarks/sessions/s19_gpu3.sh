#!/usr/bin/env bash
# Nineteenth session's third device call: compiled Vim-S call by call in three trees (call 1's custom_op ops,
# .ab/c1 = `git archive 285df15 src`; this tree's Library ops without the frame-hook wrapper, .ab/nodis; this tree).
#   bash benchmarks/sessions/s19_gpu3.sh
set -uo pipefail
OUT=${OUT:-out/s19c}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | head -1
for tree in .ab/c1/src .ab/nodis/src src; do
  echo "== $tree"
  TORCH_LOGS=recompiles PYTHONPATH=$tree timeout 85 python3 benchmarks/compile_probe_gpu.py \
    --variants unmerged,merged > "$OUT/probe_$(echo $tree | tr / _).txt" 2>&1
  grep -v "Warning\|warn(" "$OUT/probe_$(echo $tree | tr / _).txt" | grep "calls\|host\|Recompiling\|guard failure\|- 0/" | cut -c1-220 | head -12
done

#!/usr/bin/env bash
# Thirty-ninth session, call 7: (1) whether programmatic dependent launch overlaps two kernels inside a CUDA graph
# (pdl_graph_probe_gpu.py); (2) Vim-Ti's merging layers with the compact plan up to 32 merged sources (as is) or up
# to 128 (layer 22's r=71 too), graphed us per layer.
#   bash benchmarks/sessions/s39_gpu7.sh        (OUT=out/s39g by default; about 150 s)
set -uo pipefail
OUT=${OUT:-out/s39g} BUDGET_S=${BUDGET_S:-300} source benchmarks/_session.sh
echo "== 1. PDL in a graph ($(left) s left)"
timeout 90 python3 benchmarks/pdl_graph_probe_gpu.py --busy-us 20 --reps 20 2>&1 | quiet | tee "$OUT/pdl_probe.txt"
echo "== 2. compact plan at r=71 ($(left) s left)"
(cd benchmarks && timeout 150 python3 match_schedule_gpu.py --models vim_tiny_patch16_224 --reps 12 \
  --ab "compact_max_r=32;128") 2>&1 | quiet | tee "$OUT/match_compact.txt"
echo "done, $(left) s left"

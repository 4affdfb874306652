#!/usr/bin/env bash
# Thirty-ninth session, call 1: where graphed merged Vim-Ti / S spend time layer by layer (each kind of kernel's
# time per layer, unmerged and merged, and each kind's fixed cost per call from a line through them).
#   bash benchmarks/sessions/s39_gpu1.sh        (OUT=out/s39a by default; about 150 s)
set -uo pipefail
OUT=${OUT:-out/s39a} BUDGET_S=${BUDGET_S:-400} source benchmarks/_session.sh
echo "== 1. layer costs ($(left) s left)"
(cd benchmarks && timeout 300 python3 layer_costs_gpu.py --models vim_tiny_patch16_224,vim_small_patch16_224 \
  --calls 10 --layers) 2>&1 | quiet | tee "$OUT/layer_costs.txt"
echo "done, $(left) s left"

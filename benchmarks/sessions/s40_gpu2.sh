#!/usr/bin/env bash
# Fortieth session, call 2: where the one-launch sum + out_proj + matching's isolated gain goes in the whole graphed
# merged Vim-Ti: layer_costs_gpu.py on d4e4b20's source (s40tmp/src, from `git archive d4e4b20 src`) with the fused
# launch on and off, alternating.
set -uo pipefail
OUT=${OUT:-out/s40b} BUDGET_S=${BUDGET_S:-570} source benchmarks/_session.sh
cd benchmarks
for i in 1 2; do
  for f in 1 0; do
    L=$(left); echo "== RMEETO_FUSED_OUTPROJ_MATCH=$f, pass $i ($L s left)"
    RMEETO_FUSED_OUTPROJ_MATCH=$f PYTHONPATH=$PWD/../s40tmp/src timeout $(( L - 15 )) python3 layer_costs_gpu.py \
      --models vim_tiny_patch16_224 --calls 10 --layers 2>&1 | quiet > "$OUT/costs_f${f}_$i.txt"
    grep "#\|excess over\|^  [a-z]" "$OUT/costs_f${f}_$i.txt" | cut -c1-200
  done
done
echo "done, $(left) s left"
cd .. && tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz --warning=no-file-changed . ; find "$OUT" -type f ! -name all.tar.gz -delete

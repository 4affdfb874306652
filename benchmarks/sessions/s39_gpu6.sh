#!/usr/bin/env bash
# Thirty-ninth session, call 6: Vim-B's sum + out_proj, the add + cuBLAS against the TMA tiles (with the row-half split
# where its rule takes it) at every token count, 197 and 186 included (today served by the add + cuBLAS); then whole
# graphed and eager Vim-B with the TMA tiles up to 175 tokens (today) and at every layer, alternating processes.
#   bash benchmarks/sessions/s39_gpu6.sh        (OUT=out/s39f by default; about 300 s)
set -uo pipefail
OUT=${OUT:-out/s39f} BUDGET_S=${BUDGET_S:-420} source benchmarks/_session.sh
echo "== 1. out_proj, Vim-B width ($(left) s left)"
(cd benchmarks && timeout 120 python3 bench_outproj_gpu.py --dims 1536x768 --configs "128,256,64,8,3" --reps 12) 2>&1 \
  | quiet | tee "$OUT/outproj_b.txt" | grep -v "^  table"
i=0
for v in 22400 25216 22400 25216; do
  i=$((i + 1)); L=$(left); [ "$L" -lt 60 ] && break
  echo "== 2.$i Vim-B, outproj.TMA_MAX_ROWS=$v ($L s left)"
  timeout $(( L - 8 )) python3 benchmarks/bench_set.py --set outproj.TMA_MAX_ROWS=$v -- bench vim_base_patch16_224 \
    --preset paper --modes cudagraph,eager --rounds 3 --json "$OUT/ab_b_${v}_$i.json" 2>&1 | quiet \
    | tee "$OUT/ab_b_${v}_$i.txt" | grep -i "cudagraph\|eager\|error" | cut -c1-220
done
echo "done, $(left) s left"
tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz --warning=no-file-changed . ; find "$OUT" -type f ! -name all.tar.gz -delete

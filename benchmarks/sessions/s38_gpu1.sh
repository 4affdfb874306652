#!/usr/bin/env bash
# Thirty-eighth session, call 1: (1) in_proj at every token count of the Vim-S / Vim-Ti paper schedules, cuBLAS
# against the persistent TMA tiles with one program per SM (today's kernel) and with two or three per SM
# (gemm_ab_gpu.py backend "tmas"), graphed us per call; (2) whole graphed Vim-S with the TMA in_proj taken up to 131
# tokens (today) or up to 186 (every merged layer), alternating processes.
#   bash benchmarks/sessions/s38_gpu1.sh        (OUT=out/s38a by default; about 480 s)
set -uo pipefail
OUT=${OUT:-out/s38a} BUDGET_S=${BUDGET_S:-560} source benchmarks/_session.sh
echo "== 1. in_proj tiles ($(left) s left)"
(cd benchmarks && timeout 240 python3 gemm_ab_gpu.py --models S,Ti --ops in --backends cublas,tma,tmas --reps 9) 2>&1 \
  | quiet | tee "$OUT/gemm_in.txt" | grep -v "^   " | cut -c1-250
i=0
for v in 16768 23808 16768 23808; do
  i=$((i + 1)); L=$(left); [ "$L" -lt 75 ] && break
  echo "== 2.$i whole Vim-S graphed, inproj.WIDE_MAX_ROWS=$v ($L s left)"
  timeout $(( L - 10 )) python3 benchmarks/bench_set.py --set inproj.WIDE_MAX_ROWS=$v -- bench vim_small_patch16_224 \
    --preset paper --modes cudagraph --rounds 3 --json "$OUT/rows_${v}_$i.json" 2>&1 | quiet \
    | tee "$OUT/rows_${v}_$i.txt" | grep -i "cudagraph\|error\|ratio" | cut -c1-220
done
echo "done, $(left) s left"
tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz --warning=no-file-changed . ; find "$OUT" -type f ! -name all.tar.gz -delete

#!/usr/bin/env bash
# Fortieth session, call 1: a batch's forward as parts on concurrent streams inside one CUDA graph (Vim-Ti, Vim-S).
#   bash benchmarks/sessions/s40_gpu1.sh        (OUT=out/s40a by default)
set -uo pipefail
OUT=${OUT:-out/s40a} BUDGET_S=${BUDGET_S:-570} source benchmarks/_session.sh
cd benchmarks
L=$(left); echo "== stream split ($L s left)"
timeout $(( L - 15 )) python3 stream_split_gpu.py --models vim_tiny_patch16_224,vim_small_patch16_224 \
  --variants one,seq2,par2,prio2,par4 --rounds 5 --repeats 60 --json "$OUT/split.json" 2>&1 | quiet \
  | tee "$OUT/split.txt" | cut -c1-220
echo "done, $(left) s left"
cd .. && tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz --warning=no-file-changed . ; find "$OUT" -type f ! -name all.tar.gz -delete

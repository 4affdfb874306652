#!/usr/bin/env bash
# Thirty-eighth session, call 2: where the merged Vim-S forward's per-kernel times exceed their token share, kernel
# by kernel at every token count of the schedule: (1) the conv + SiLU forward in other tiles and tiled over flat
# rows (conv_tiles_gpu.py); (2) x_proj + dt_proj at 131-76 tokens in other tiles (bench_proj_gpu.py); (3) in_proj's
# TMA tiles, every tiling at Vim-S width (gemm_ab_gpu.py --all).
#   bash benchmarks/sessions/s38_gpu2.sh        (OUT=out/s38b by default)
set -uo pipefail
OUT=${OUT:-out/s38b} BUDGET_S=${BUDGET_S:-560} source benchmarks/_session.sh
OUT=$(realpath "$OUT")
cd benchmarks
echo "== 1. conv tiles ($(left) s left)"
timeout 200 python3 conv_tiles_gpu.py --dims 768,384 2>&1 | quiet | tee "$OUT/conv.txt" | cut -c1-400
echo "== 2. proj tiles at 131-76 tokens ($(left) s left)"
timeout 170 python3 bench_proj_gpu.py --dims 768 --lengths 186,142,131,120,109,98,87,76 --reps 15 --configs \
  "64,64,128,4,3;64,128,128,4,3;64,128,128,4,2;64,64,128,4,4;64,64,128,4,5;64,64,256,4,3;64,64,256,8,3;32,64,128,4,3;32,128,128,4,3;32,64,256,4,3;64,128,256,8,2;128,128,128,8,3;64,256,128,4,2;32,256,128,4,2;128,64,64,8,3" \
  2>&1 | quiet | tee "$OUT/proj.txt" | grep -v "^   kernel" | cut -c1-300
echo "== 3. in_proj TMA tilings at Vim-S width ($(left) s left)"
timeout $(( $(left) - 20 )) python3 gemm_ab_gpu.py --models S --ops in --backends cublas,tma --all --reps 9 2>&1 | quiet \
  > "$OUT/gemm.txt"; tail -8 "$OUT/gemm.txt"
cd ..
echo "done, $(left) s left"
tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz --warning=no-file-changed . ; find "$OUT" -type f ! -name all.tar.gz -delete

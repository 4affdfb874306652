#!/usr/bin/env bash
# Thirty-sixth session, call 3: where an eager forward's host time goes on this host. Call 2 measured one merged
# Vim-S forward's issue at 7.5 ms against 4.9 unmerged (the same number of launches), and call 1's eager rounds
# swung 2x. The host's CPU speed (host_speed.py, also run on the workplace), host us per op and per merging layer
# (profile_gpu.py --ops --merge-layers), cProfile of merged / unmerged Vim-S forwards at batch 128; then every GPU
# test on this tree. Packed into one archive at the end.
#   bash benchmarks/sessions/s36_gpu3.sh        (OUT=out/s36c by default; about 580 s)
set -uo pipefail
OUT=${OUT:-out/s36c} BUDGET_S=${BUDGET_S:-590} source benchmarks/_session.sh
echo "== 1. host speed ($(left) s left)"
lscpu | grep -i "model name\|^CPU(s)\|MHz\|Thread" | tee "$OUT/lscpu.txt"
python3 benchmarks/host_speed.py 2>&1 | tee "$OUT/host_speed.txt"
echo "== 2. host us per op and per merging layer ($(left) s left)"
timeout 75 python3 benchmarks/profile_gpu.py --model vim_small_patch16_224 --ops --merge-layers --what none 2>&1 \
  | quiet | tee "$OUT/ops.txt" | cut -c1-200
echo "== 3. cProfile, Vim-S at batch 128 ($(left) s left)"
timeout 60 python3 benchmarks/host_issue_gpu.py --models vim_small_patch16_224 --batches 128 --tries 20 --rows 40 2>&1 \
  | quiet > "$OUT/host_issue_s.txt"; grep "batch 128" "$OUT/host_issue_s.txt"
python3 benchmarks/host_speed.py 2>&1 | tail -1
L=$(left); echo "== 4. every GPU test ($L s left)"
OUT=$OUT/tests WORKERS=16 LIMIT_S=$(( L - 12 )) bash benchmarks/gpu_tests.sh tests
gzip -f "$OUT/tests/log.txt"
echo "done, $(left) s left"
tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz --warning=no-file-changed . ; find "$OUT" -type f ! -name all.tar.gz -delete

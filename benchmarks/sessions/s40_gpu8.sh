#!/usr/bin/env bash
# Fortieth session, call 8: the scan forward with float32 B / C rows (read mode 3, no 16-bit unpacking), with and
# without prefetch, against the 16-bit rows, at Vim-Ti's and Vim-S's widths.
set -uo pipefail
OUT=${OUT:-out/s40h} BUDGET_S=${BUDGET_S:-300} source benchmarks/_session.sh
(cd benchmarks && python3 scan_align_gpu.py --dims 384,768 --lengths 197,76 --fp32 2>&1 | quiet | tee "$OUT/scan_fp32.txt")
echo "done, $(left) s left"
tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz --warning=no-file-changed . ; find "$OUT" -type f ! -name all.tar.gz -delete

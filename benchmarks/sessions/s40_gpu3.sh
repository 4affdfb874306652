#!/usr/bin/env bash
# Fortieth session, call 3: the scan forward's tiles with several lanes per channel against the shipped tile.
set -uo pipefail
OUT=${OUT:-out/s40c} BUDGET_S=${BUDGET_S:-400} source benchmarks/_session.sh
cd benchmarks
L=$(left); echo "== scan lanes ($L s left)"
timeout $(( L - 15 )) python3 scan_lanes_gpu.py 2>&1 | quiet | tee "$OUT/scan_lanes.txt" | cut -c1-220
echo "done, $(left) s left"
cd .. && tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz --warning=no-file-changed . ; find "$OUT" -type f ! -name all.tar.gz -delete

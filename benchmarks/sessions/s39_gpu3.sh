#!/usr/bin/env bash
# Thirty-ninth session, call 3: x_proj + dt_proj with the delta columns split over NSPLIT programs per row tile, at
# the short token counts of the merged Vim-Ti / S schedules (graphed us per call; outputs equal to the default's bit
# for bit, or flagged).
#   bash benchmarks/sessions/s39_gpu3.sh        (OUT=out/s39c by default; about 200 s)
set -uo pipefail
OUT=${OUT:-out/s39c} BUDGET_S=${BUDGET_S:-400} source benchmarks/_session.sh
C="64,64,64,4,2;64,64,64,4,2,2;64,64,64,4,2,3;64,64,64,4,2,6;32,64,64,4,2;32,64,64,4,2,2;32,64,64,4,2,3"
C="$C;64,64,128,4,3;64,64,128,4,3,2;64,64,128,4,3,3;64,64,128,4,2,3;128,64,64,4,3,2;128,64,64,4,3,3;128,64,64,4,3,6"
C="$C;64,64,64,4,3,4;64,64,64,4,3,6;32,64,128,4,2,3;64,32,64,4,2,3"
echo "== 1. proj NSPLIT ($(left) s left)"
(cd benchmarks && timeout 300 python3 bench_proj_gpu.py --dims 384,768 --lengths 76,87,98,109,147 --reps 15 \
  --configs "$C") 2>&1 | quiet | tee "$OUT/proj_nsplit.txt" | grep -v "^   kernel" 
grep "^   kernel" "$OUT/proj_nsplit.txt" | sort -t: -k2 -n | head -0
echo "done, $(left) s left"

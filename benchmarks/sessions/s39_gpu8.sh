#!/usr/bin/env bash
# Thirty-ninth session, call 8: prototype of the sum + out_proj before a merge and the merge's matching in one kernel,
# a program per image (outproj_match_gpu.py), against the two launches the models run, at Vim-Ti's merging layers.
#   bash benchmarks/sessions/s39_gpu8.sh        (OUT=out/s39h by default; about 120 s)
set -uo pipefail
OUT=${OUT:-out/s39h} BUDGET_S=${BUDGET_S:-300} source benchmarks/_session.sh
(cd benchmarks && timeout 240 python3 outproj_match_gpu.py --reps 15 --lengths 197,172,147 \
  --tiles "64,64,8,3;128,64,8,3;64,32,8,3;64,64,8,2;128,32,8,4") 2>&1 | quiet | tee "$OUT/outproj_match.txt"
echo "done, $(left) s left"

#!/usr/bin/env bash
# Thirty-fourth session, call 2: x_proj + dt_proj with the rows spread evenly over whole waves of programs
# (proj_balance_gpu.py) at every token count of the merged Vim-Ti / S schedules, against the tiles the launcher
# takes. Everything under $OUT is packed into one archive at the end.
#   bash benchmarks/sessions/s34_gpu2.sh        (OUT=out/s34b by default; about 300 s)
set -uo pipefail
OUT=${OUT:-out/s34b} BUDGET_S=${BUDGET_S:-300} source benchmarks/_session.sh
echo "== proj balanced, Vim-S then Vim-Ti widths ($(left) s left)"
(cd benchmarks && timeout 280 python3 proj_balance_gpu.py --dims 768,384) 2>&1 | quiet | tee "$OUT/proj_balance.txt" \
  | grep -E "^#|best:|^D=" | cut -c1-200
echo "done, $(left) s left"
tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz --warning=no-file-changed . ; find "$OUT" -type f ! -name all.tar.gz -delete

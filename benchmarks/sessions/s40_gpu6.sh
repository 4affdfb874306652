#!/usr/bin/env bash
# Fortieth session, call 6, the final tree (x_dbl rows aligned): issue 14's inference targets, Vim-Ti / S / B
# eager and graphed in alternating rounds, with nvidia-smi logged.
#   bash benchmarks/sessions/s40_gpu6.sh        (OUT=out/s40f by default; about 400 s)
set -uo pipefail
OUT=${OUT:-out/s40f} BUDGET_S=${BUDGET_S:-520} source benchmarks/_session.sh
Q=timestamp,clocks.sm,clocks.mem,power.draw,power.limit,temperature.gpu,clocks_event_reasons.active
nvidia-smi --query-gpu=$Q --format=csv >/dev/null 2>&1 || Q=${Q/clocks_event_reasons/clocks_throttle_reasons}
nvidia-smi --query-gpu=$Q --format=csv -lms 100 > "$OUT/smi.csv" 2>&1 &
SMI=$!
L=$(left); echo "== Vim-Ti, S, B: cudagraph, eager ($L s left)"
timeout $(( L - 15 )) python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224 \
  --preset paper --modes cudagraph,eager --rounds 5 --repeats 60 --json "$OUT/bench.json" 2>&1 | quiet \
  | tee "$OUT/bench.txt" | grep -i "eager\|cudagraph\|error" | cut -c1-200
kill $SMI
echo "done, $(left) s left"
tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz --warning=no-file-changed . ; find "$OUT" -type f ! -name all.tar.gz -delete

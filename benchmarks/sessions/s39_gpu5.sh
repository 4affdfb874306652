#!/usr/bin/env bash
# Thirty-ninth session, call 5, the final tree: issue 14's inference targets, Vim-Ti / S / B eager and graphed in
# alternating rounds, with nvidia-smi logged.
#   bash benchmarks/sessions/s39_gpu5.sh        (OUT=out/s39e by default; about 500 s)
# ROUNDS / REPEATS (7 / 90, the README's protocol) change the rounds and repeats (s40_gpu6.sh: 5 / 60).
set -uo pipefail
OUT=${OUT:-out/s39e} BUDGET_S=${BUDGET_S:-570} source benchmarks/_session.sh
Q=timestamp,clocks.sm,clocks.mem,power.draw,power.limit,temperature.gpu,clocks_event_reasons.active
nvidia-smi --query-gpu=$Q --format=csv >/dev/null 2>&1 || Q=${Q/clocks_event_reasons/clocks_throttle_reasons}
nvidia-smi --query-gpu=$Q --format=csv -lms 100 > "$OUT/smi.csv" 2>&1 &
SMI=$!
L=$(left); echo "== Vim-Ti, S, B: cudagraph, eager ($L s left)"
timeout $(( L - 15 )) python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224 \
  --preset paper --modes cudagraph,eager --rounds ${ROUNDS:-7} --repeats ${REPEATS:-90} --json "$OUT/bench.json" \
  2>&1 | quiet \
  | tee "$OUT/bench.txt" | grep -i "eager\|cudagraph\|error" | cut -c1-200
kill $SMI
echo "done, $(left) s left"
tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz --warning=no-file-changed . ; find "$OUT" -type f ! -name all.tar.gz -delete

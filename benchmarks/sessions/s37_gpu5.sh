#!/usr/bin/env bash
# Thirty-seventh session, call 5: call 4's inference run again on a fresh machine start (the same source), so the
# spread of the graphed ratios between runs is on record: Vim-Ti / S / B eager and graphed, 9 alternating rounds of 10
# calls, the SM clock, power and clock-event reasons logged every 100 ms. Packed into one archive.
#   bash benchmarks/sessions/s37_gpu5.sh        (OUT=out/s37e by default; about 110 s)
set -uo pipefail
OUT=${OUT:-out/s37e} BUDGET_S=${BUDGET_S:-240} source benchmarks/_session.sh
Q=timestamp,clocks.sm,clocks.mem,power.draw,power.limit,temperature.gpu,clocks_event_reasons.active
nvidia-smi --query-gpu=$Q --format=csv >/dev/null 2>&1 || Q=${Q/clocks_event_reasons/clocks_throttle_reasons}
nvidia-smi --query-gpu=$Q --format=csv -lms 100 > "$OUT/smi.csv" 2>&1 &
SMI=$!
echo "== Vim-Ti, S, B: eager, cudagraph, 9 rounds ($(left) s left)"
timeout 200 python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224 --preset paper \
  --modes eager,cudagraph --rounds 9 --repeats 90 --json "$OUT/bench.json" 2>&1 | quiet \
  | tee "$OUT/bench.txt" | grep -i "eager\|cudagraph\|error\|rounds" | cut -c1-200
kill $SMI
echo "done, $(left) s left"
tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz --warning=no-file-changed . ; find "$OUT" -type f ! -name all.tar.gz -delete

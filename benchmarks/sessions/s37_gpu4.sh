#!/usr/bin/env bash
# Thirty-seventh session, call 4: call 3 met every inference target but graphed Vim-B (1.3827, rounds 1.371-1.399;
# its compile+cudagraph mode, the same kernels, 1.4317 in the same run), and its training step was cut after the
# eager mode. Here, all in one run with the card's SM clock, power and clock-event reasons logged every 100 ms:
# Vim-Ti / S / B eager and graphed in 9 alternating rounds of 10 calls each (shorter rounds: a clock change under
# the power cap moves fewer of them), then the training step in all three modes. Packed into one archive.
#   bash benchmarks/sessions/s37_gpu4.sh        (OUT=out/s37d by default; about 420 s)
set -uo pipefail
OUT=${OUT:-out/s37d} BUDGET_S=${BUDGET_S:-500} source benchmarks/_session.sh
Q=timestamp,clocks.sm,clocks.mem,power.draw,power.limit,temperature.gpu,clocks_event_reasons.active
nvidia-smi --query-gpu=$Q --format=csv >/dev/null 2>&1 || Q=${Q/clocks_event_reasons/clocks_throttle_reasons}
nvidia-smi --query-gpu=$Q --format=csv -lms 100 > "$OUT/smi.csv" 2>&1 &
SMI=$!
echo "== 1. Vim-Ti, S, B: eager, cudagraph, 9 rounds ($(left) s left)"
echo "start bench $(date +%H:%M:%S.%N)" >> "$OUT/marks.txt"
timeout 200 python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224 --preset paper \
  --modes eager,cudagraph --rounds 9 --repeats 90 --json "$OUT/bench.json" 2>&1 | quiet \
  | tee "$OUT/bench.txt" | grep -i "eager\|cudagraph\|error\|rounds" | cut -c1-200
echo "end bench $(date +%H:%M:%S.%N)" >> "$OUT/marks.txt"
L=$(left); echo "== 2. training step: cudagraph, eager, compile ($L s left)"
timeout $(( L - 15 )) python3 -m rmeeto bench vim_small_patch16_224 --train --no-inference \
  --modes cudagraph,eager,compile --train-repeats 3 --json "$OUT/train.json" 2>&1 | quiet \
  | tee "$OUT/train.txt" | grep -i "eager\|compile\|cudagraph\|error" | cut -c1-200
kill $SMI
echo "done, $(left) s left"
tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz --warning=no-file-changed . ; find "$OUT" -type f ! -name all.tar.gz -delete

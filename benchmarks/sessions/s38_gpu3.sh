#!/usr/bin/env bash
# Thirty-eighth session, call 3, the final tree (in_proj's TMA tiles up to 186 tokens at Vim-S width, the conv
# forward over flat rows): (1) the GPU tests of the conv, the mixer plans, launches, in_proj, projections, the merge
# and whole models; (2) issue 14's inference targets, Vim-Ti / S / B eager and graphed in 7 alternating rounds,
# with nvidia-smi logged.
#   bash benchmarks/sessions/s38_gpu3.sh        (OUT=out/s38c by default; about 560 s)
set -uo pipefail
OUT=${OUT:-out/s38c} BUDGET_S=${BUDGET_S:-575} source benchmarks/_session.sh
echo "== 1. GPU tests ($(left) s left)"
OUT="$OUT/tests" WORKERS=16 LIMIT_S=270 bash benchmarks/gpu_tests.sh tests/ops/test_gpu_conv.py \
  tests/ops/test_gpu_plan.py tests/ops/test_gpu_launch.py tests/ops/test_gpu_inproj.py tests/ops/test_gpu_proj.py \
  tests/ops/test_gpu_bidir.py tests/models/test_gpu_model.py
tail -4 "$OUT/tests/log.txt"; grep -E "FAILED|ERROR" "$OUT/tests/log.txt" | head -10
Q=timestamp,clocks.sm,clocks.mem,power.draw,power.limit,temperature.gpu,clocks_event_reasons.active
nvidia-smi --query-gpu=$Q --format=csv >/dev/null 2>&1 || Q=${Q/clocks_event_reasons/clocks_throttle_reasons}
nvidia-smi --query-gpu=$Q --format=csv -lms 100 > "$OUT/smi.csv" 2>&1 &
SMI=$!
L=$(left); echo "== 2. Vim-Ti, S, B: eager, cudagraph ($L s left)"
timeout $(( L - 15 )) python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224 \
  --preset paper --modes cudagraph,eager --rounds 7 --repeats 90 --json "$OUT/bench.json" 2>&1 | quiet \
  | tee "$OUT/bench.txt" | grep -i "eager\|cudagraph\|error" | cut -c1-200
kill $SMI
echo "done, $(left) s left"
tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz --warning=no-file-changed . ; find "$OUT" -type f ! -name all.tar.gz -delete

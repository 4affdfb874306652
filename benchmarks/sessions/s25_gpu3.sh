#!/usr/bin/env bash
# Twenty-fifth session, call 3: the directions' sum + out_proj kernel (rmeeto.ops.triton.outproj): its tiles against
# the add + cuBLAS over the merged schedules, whole Vim-Ti / S with it off and on (eager and graphed), then every
# GPU test.
#   bash benchmarks/sessions/s25_gpu3.sh        (OUT=out/s25c by default; about 590 s)
set -uo pipefail
OUT=${OUT:-out/s25c} BUDGET_S=${BUDGET_S:-585} source benchmarks/_session.sh
export PYTHONPATH=$PWD/src
echo "== 1. sum + out_proj tiles"
(cd benchmarks && timeout 150 python3 bench_outproj_gpu.py 2>&1) | quiet | tee "$OUT/outproj.txt" | grep -v "^  {"
for v in 0 1; do
  L=$(left); echo "== 2. Vim-Ti, S, eager and graphed, RMEETO_FUSED_OUTPROJ=$v ($L s left)"
  RMEETO_FUSED_OUTPROJ=$v timeout 100 python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 --preset paper \
    --modes eager,cudagraph --rounds 3 2>&1 | quiet | tee "$OUT/bench_outproj$v.txt" | grep -i "eager\|cudagraph\|error" | cut -c1-170
done
L=$(left); echo "== 3. every GPU test ($L s left)"
OUT=$OUT/tests WORKERS=16 LIMIT_S=$(( L - 15 )) bash benchmarks/gpu_tests.sh tests
cp $OUT/tests/log.txt $OUT/tests_log.txt 2>/dev/null
echo "done, $(left) s left"

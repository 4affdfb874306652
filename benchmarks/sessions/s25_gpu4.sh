#!/usr/bin/env bash
# Twenty-fifth session, call 4: the sum + out_proj kernel in its chosen tiles (4 warps): whole Vim-Ti / S with it off
# and on (eager and graphed, two processes each, alternating), and its GPU tests with the plan and model tests.
#   bash benchmarks/sessions/s25_gpu4.sh        (OUT=out/s25d by default; about 330 s)
set -uo pipefail
OUT=${OUT:-out/s25d} BUDGET_S=${BUDGET_S:-400} source benchmarks/_session.sh
export PYTHONPATH=$PWD/src
for v in 0 1 0 1; do
  L=$(left); echo "== 1. Vim-Ti, S, eager and graphed, RMEETO_FUSED_OUTPROJ=$v ($L s left)"
  [ "$L" -lt 150 ] && break
  RMEETO_FUSED_OUTPROJ=$v timeout 100 python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 --preset paper \
    --modes eager,cudagraph --rounds 3 2>&1 | quiet | tee -a "$OUT/bench_outproj$v.txt" | grep -i "eager\|cudagraph\|error" | cut -c1-170
done
L=$(left); echo "== 2. GPU tests: sum + out_proj, plans, models ($L s left)"
OUT=$OUT/tests WORKERS=16 LIMIT_S=$(( L - 10 )) bash benchmarks/gpu_tests.sh tests/ops/test_gpu_outproj.py \
  tests/ops/test_gpu_plan.py tests/ops/test_gpu_proj.py tests/models/test_gpu_model.py tests/ops/test_custom_ops.py
echo "done, $(left) s left"

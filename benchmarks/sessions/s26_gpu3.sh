#!/usr/bin/env bash
# Twenty-sixth session, call 3: the launch cache's fix (a constexpr left at its default, PDL=False, had sent every
# launch of the PDL kernels down Triton's plain path whenever RMEETO_PDL was off): the GPU tests that caught it, then
# Vim-Ti / S eager and graphed with PDL off (the default). Sized to the session's last 240 s of device time.
#   bash benchmarks/sessions/s26_gpu3.sh        (OUT=out/s26c by default; about 150 s)
set -uo pipefail
OUT=${OUT:-out/s26c} BUDGET_S=${BUDGET_S:-150} source benchmarks/_session.sh
export PYTHONPATH=$PWD/src
echo "== 1. GPU tests: launches, plans"
OUT=$OUT/tests WORKERS=16 LIMIT_S=75 bash benchmarks/gpu_tests.sh tests/ops/test_gpu_launch.py tests/ops/test_gpu_plan.py
L=$(left); echo "== 2. Vim-Ti, S eager and graphed, PDL off ($L s left)"
timeout $(( L - 5 )) python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 --preset paper \
  --modes eager,cudagraph --rounds 1 2>&1 | quiet | tee "$OUT/bench.txt" | grep -i "eager\|cudagraph\|error" | cut -c1-170
echo "done, $(left) s left"

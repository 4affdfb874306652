#!/usr/bin/env bash
# Twenty-sixth session, call 3: the launch cache's fix (a constexpr left at its default, PDL=False, had sent every
# launch of the PDL kernels down Triton's plain path whenever RMEETO_PDL was off): the GPU tests that caught it and
# those of the plans and PDL; then Vim-Ti / S eager and graphed with PDL off (the default) and Ti / S on.
#   bash benchmarks/s26_gpu3.sh        (OUT=out/s26c by default; about 250 s)
set -uo pipefail
OUT=${OUT:-out/s26c} BUDGET_S=${BUDGET_S:-250} source benchmarks/_session.sh
export PYTHONPATH=$PWD/src
echo "== 1. GPU tests: launches, plans, PDL, models"
OUT=$OUT/tests WORKERS=16 LIMIT_S=100 bash benchmarks/gpu_tests.sh tests/ops/test_gpu_launch.py tests/ops/test_gpu_plan.py \
  tests/ops/test_gpu_pdl.py
L=$(left); echo "== 2. Vim-Ti, S eager and graphed, PDL off ($L s left)"
timeout $(( L - 50 )) python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 --preset paper \
  --modes eager,cudagraph --rounds 3 2>&1 | quiet | tee "$OUT/bench.txt" | grep -i "eager\|cudagraph\|error" | cut -c1-170
L=$(left); echo "== 3. Vim-Ti, S eager, RMEETO_PDL=1 ($L s left)"
[ "$L" -lt 40 ] && exit 0
RMEETO_PDL=1 timeout $(( L - 3 )) python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 --preset paper \
  --modes eager --rounds 3 2>&1 | quiet | tee "$OUT/bench_pdl1.txt" | grep -i "eager\|error" | cut -c1-170
echo "done, $(left) s left"

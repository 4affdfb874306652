#!/usr/bin/env bash
# Twenty-eighth session, call 3, the final tree (the compact plan on, the packed partner search removed): Vim-Ti / S / B
# eager and graphed in one run, then the GPU tests of the matching, merge and whole models (call 2 ran every GPU test
# with the compact plan and the packed search both on).
#   bash benchmarks/sessions/s28_gpu3.sh        (OUT=out/s28c by default; about 560 s)
set -uo pipefail
OUT=${OUT:-out/s28c} BUDGET_S=${BUDGET_S:-570} source benchmarks/_session.sh
export PYTHONPATH=$PWD/src
echo "== Vim-Ti / S / B, eager and graphed ($(left) s left)"
timeout 260 python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224 --preset paper \
  --modes eager,cudagraph --rounds 3 --json "$OUT/bench.json" 2>&1 | quiet | tee "$OUT/bench.txt" | cut -c1-170
L=$(left); echo "== GPU tests: matching, merge, plans, launches, models ($L s left)"
OUT=$OUT/tests WORKERS=16 LIMIT_S=$(( L - 10 )) bash benchmarks/gpu_tests.sh tests/ops/test_merge_fused.py \
  tests/ops/test_gpu_plan.py tests/ops/test_merge_host.py tests/ops/test_gpu_launch.py tests/models/test_gpu_model.py
echo "done, $(left) s left"

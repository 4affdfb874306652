#!/usr/bin/env bash
# Thirty-first session, call 2: the GPU tests of the matching, the plans and the projections on this tree; then whole
# graphed Vim-Ti / S, the tree before this session (.ab/base/src) against this one (the matching over whole rows,
# x_proj + dt_proj tiles for Vim-Ti's width), alternating processes.
#   mkdir -p .ab/base && git archive a0d6fa8 src | tar -x -C .ab/base
#   bash benchmarks/sessions/s31_gpu2.sh        (OUT=out/s31b by default; about 560 s)
set -uo pipefail
OUT=${OUT:-out/s31b} BUDGET_S=${BUDGET_S:-560} source benchmarks/_session.sh
FINAL=$PWD/src BASE=$PWD/.ab/base/src
echo "== GPU tests: matching, plans, projections ($(left) s left)"
OUT=$OUT/tests WORKERS=16 LIMIT_S=200 bash benchmarks/gpu_tests.sh tests/ops/test_merge_fused.py \
  tests/ops/test_gpu_plan.py tests/ops/test_gpu_proj.py
for v in final base final base final; do
  L=$(left); [ "$L" -lt 50 ] && break
  echo "== Vim-Ti, S graphed, $v ($L s left)"
  PYTHONPATH=$([ $v = base ] && echo $BASE || echo $FINAL) timeout $(( L - 5 )) python3 -m rmeeto bench \
    vim_tiny_patch16_224 vim_small_patch16_224 --preset paper --modes cudagraph --rounds 2 2>&1 | quiet \
    | tee -a "$OUT/bench_$v.txt" | grep -i "cudagraph\|error" | cut -c1-170
done
echo "done, $(left) s left"

#!/usr/bin/env bash
# Thirty-first session, call 7: the whole-row partner step widened to Vim-S's 64-source tiles (MATCH_CONFIG
# rows_max_elems = 128 x 192): the matching's GPU tests, Vim-S's merging layers per call, whole graphed Vim-S
# alternating processes.
#   bash benchmarks/sessions/s31_gpu6.sh        (OUT=out/s31f by default; about 330 s)
set -uo pipefail
OUT=${OUT:-out/s31f} BUDGET_S=${BUDGET_S:-370} source benchmarks/_session.sh
echo "== GPU tests: matching, plans, whole models ($(left) s left)"
OUT=$OUT/tests WORKERS=16 LIMIT_S=200 bash benchmarks/gpu_tests.sh tests/ops/test_merge_fused.py \
  tests/ops/test_gpu_plan.py tests/models/test_gpu_model.py 2>&1 | tail -12
echo "== Vim-S matching per merging layer, rows_max_elems None | 24576 ($(left) s left)"
(cd benchmarks && timeout 60 python3 match_schedule_gpu.py --models vim_small_patch16_224 \
  --ab "rows_max_elems=None;24576") 2>&1 | quiet | tee "$OUT/match_rows_s.txt" | cut -c1-200
for v in None 24576 None 24576; do
  L=$(left); [ "$L" -lt 30 ] && break
  echo "== Vim-S graphed, rows_max_elems=$v ($L s left)"
  timeout $(( L - 5 )) python3 benchmarks/bench_set.py --set rows_max_elems=$v -- bench vim_small_patch16_224 \
    --preset paper --modes cudagraph --rounds 2 2>&1 | quiet | tee -a "$OUT/bench_rows_$v.txt" \
    | grep -i "cudagraph\|error" | cut -c1-170
done
echo "done, $(left) s left"

#!/usr/bin/env bash
# Thirtieth session, call 1: the matching with the metric's row norms given as sums of squares (what the sum +
# out_proj kernel before a merging layer can write) against taken by the matching, per merging layer of Vim-Ti / S;
# the sum + out_proj kernel's tiles at every token count (table) and with the sums of squares written; the GPU tests
# not run on session 29's final kernels (PDL, whole models) and those of the changed kernels (matching, out_proj).
#   bash benchmarks/sessions/s30_gpu1.sh        (OUT=out/s30a by default; about 560 s)
set -uo pipefail
OUT=${OUT:-out/s30a} BUDGET_S=${BUDGET_S:-560} source benchmarks/_session.sh
echo "== matching, row norms taken | given ($(left) s left)"
(cd benchmarks && timeout 120 python3 match_schedule_gpu.py --given-norms --reps 20) 2>&1 | quiet \
  | tee "$OUT/match_given_norms.txt" | cut -c1-160
echo "== sum + out_proj tiles by token count, and with sums of squares ($(left) s left)"
(cd benchmarks && timeout 150 python3 bench_outproj_gpu.py --dims 384x192,768x384 --table --sq --configs \
  "64,64,64,4,3;64,128,64,4,3;128,64,64,4,3;64,64,64,2,3;64,64,32,4,4;32,64,64,2,3;64,256,64,8,3;128,256,64,8,3;64,64,64,4,4;64,128,64,4,4;128,128,64,4,4") \
  2>&1 | quiet | tee "$OUT/outproj_tiles.txt" | grep -v "^K=" | cut -c1-400
L=$(left); echo "== GPU tests: PDL, whole models, matching / merge, out_proj, plans, launches ($L s left)"
OUT=$OUT/tests WORKERS=16 LIMIT_S=$(( L - 5 )) bash benchmarks/gpu_tests.sh tests/ops/test_gpu_pdl.py \
  tests/models/test_gpu_model.py tests/ops/test_merge_fused.py tests/ops/test_gpu_outproj.py tests/ops/test_gpu_plan.py \
  tests/ops/test_gpu_launch.py tests/ops/test_merge_host.py
echo "done, $(left) s left"

#!/usr/bin/env bash
# Thirtieth session, call 2: the matching with the metric's row norms given as sums of squares against taken by
# the matching, per merging layer of Vim-Ti / S; the sum + out_proj kernel's tiles at every token count and with the
# sums of squares written; whole Vim-Ti / S, eager and graphed, the tree before this session (.ab/base/src) against
# this one (the block before each merge hands the matching its out_proj kernel's sums), alternating; the GPU tests
# of the plans, whole models, out_proj and PDL.
#   mkdir -p .ab/base && git archive 882f046 src | tar -x -C .ab/base
#   bash benchmarks/sessions/s30_gpu2.sh        (OUT=out/s30b by default; about 560 s)
set -uo pipefail
OUT=${OUT:-out/s30b} BUDGET_S=${BUDGET_S:-560} source benchmarks/_session.sh
FINAL=$PWD/src BASE=$PWD/.ab/base/src
echo "== matching, row norms taken | given ($(left) s left)"
(cd benchmarks && timeout 100 python3 match_schedule_gpu.py --given-norms --reps 20) 2>&1 | quiet \
  | tee "$OUT/match_given_norms.txt" | grep -v "^  [ 0-9][0-9] " | cut -c1-160
echo "== sum + out_proj tiles by token count, and with sums of squares ($(left) s left)"
(cd benchmarks && timeout 100 python3 bench_outproj_gpu.py --dims 384x192,768x384 --table --sq --reps 10 --configs \
  "64,64,64,4,3;64,128,64,4,3;128,64,64,4,3;64,64,32,4,4;64,256,64,8,3;128,256,64,8,3") \
  2>&1 | quiet | tee "$OUT/outproj_tiles.txt" | grep -v "^K=.*best" | cut -c1-330
for v in final base final base; do
  L=$(left); [ "$L" -lt 230 ] && break
  echo "== Vim-Ti, S eager and graphed, $v ($L s left)"
  PYTHONPATH=$([ $v = base ] && echo $BASE || echo $FINAL) timeout 80 python3 -m rmeeto bench vim_tiny_patch16_224 \
    vim_small_patch16_224 --preset paper --modes eager,cudagraph --rounds 2 2>&1 | quiet \
    | tee -a "$OUT/bench_$v.txt" | grep -i "eager\|cudagraph\|error" | cut -c1-170
done
export PYTHONPATH=$FINAL
L=$(left); echo "== GPU tests: plans, whole models, out_proj, PDL ($L s left)"
OUT=$OUT/tests WORKERS=16 LIMIT_S=$(( L - 5 )) bash benchmarks/gpu_tests.sh tests/ops/test_gpu_plan.py \
  tests/models/test_gpu_model.py tests/ops/test_gpu_outproj.py tests/ops/test_gpu_pdl.py
echo "done, $(left) s left"

#!/usr/bin/env bash
# Twenty-ninth session, call 3: the merge + norm kernel on the grid (row tiles, batch) (final, src/) against call 2's
# (batch, row tiles) grid (.ab/new1/src) per call; whole graphed Vim-Ti / S / B, the tree before the merge + norm
# changes (.ab/base/src: norm_lists_only on) against the final one, alternating; the merge + norm GPU tests.
#   mkdir -p .ab/base .ab/new1 && git archive <commit> src | tar -x -C .ab/base (and .ab/new1)
#   bash benchmarks/sessions/s29_gpu3.sh        (OUT=out/s29c by default; about 290 s)
set -uo pipefail
OUT=${OUT:-out/s29c} BUDGET_S=${BUDGET_S:-290} source benchmarks/_session.sh
FINAL=$PWD/src NEW1=$PWD/.ab/new1/src BASE=$PWD/.ab/base/src
for v in final new1; do
  echo "== merge + norm per call, $v ($(left) s left)"
  (cd benchmarks && PYTHONPATH=$([ $v = final ] && echo $FINAL || echo $NEW1) timeout 40 python3 \
    bench_merge_norm_gpu.py --reps 20 --tiles "None") 2>&1 | quiet | tee "$OUT/merge_norm_$v.txt" | cut -c1-160
done
for v in final base final; do
  L=$(left); [ "$L" -lt 110 ] && break
  echo "== Vim-Ti, S, B graphed, $v ($L s left)"
  PYTHONPATH=$([ $v = base ] && echo $BASE || echo $FINAL) timeout 70 python3 -m rmeeto bench vim_tiny_patch16_224 \
    vim_small_patch16_224 vim_base_patch16_224 --preset paper --modes cudagraph --rounds 2 2>&1 | quiet \
    | tee -a "$OUT/bench_$v.txt" | grep -i "cudagraph\|error" | cut -c1-170
done
export PYTHONPATH=$FINAL
L=$(left); echo "== GPU tests: merge + norm, plans, launches ($L s left)"
OUT=$OUT/tests WORKERS=16 LIMIT_S=$(( L - 5 )) bash benchmarks/gpu_tests.sh \
  tests/ops/test_merge_fused.py::test_merge_add_norm_gives_the_bits_of_merge_then_norm \
  tests/ops/test_gpu_plan.py tests/ops/test_gpu_launch.py -k "merge or plan or norm"
echo "done, $(left) s left"

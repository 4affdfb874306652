#!/usr/bin/env bash
# Twenty-ninth session, call 2: the merge + norm kernel with a program per (batch element, row tile) and one
# reciprocal per row (new, src/) against the kernel before (old, .ab/old/src = git archive of the commit before it):
# per call and tile with its bits checked, per merging layer, whole graphed Vim-Ti / S in alternating processes;
# then the GPU tests of the merge, plans, launches and models, and the rest of the GPU tests as time allows.
#   mkdir -p .ab/old && git archive <old commit> src | tar -x -C .ab/old
#   bash benchmarks/sessions/s29_gpu2.sh        (OUT=out/s29b by default; about 570 s)
set -uo pipefail
OUT=${OUT:-out/s29b} BUDGET_S=${BUDGET_S:-575} source benchmarks/_session.sh
NEW=$PWD/src OLD=$PWD/.ab/old/src
echo "== merge + norm per call, new kernel, tiles ($(left) s left)"
(cd benchmarks && PYTHONPATH=$NEW timeout 80 python3 bench_merge_norm_gpu.py --reps 20 \
  --tiles "None;(8, 4);(2, 2);(4, 4);(2, 4)") 2>&1 | quiet | tee "$OUT/merge_norm_new.txt" | cut -c1-160
echo "== merge + norm per call, old kernel ($(left) s left)"
(cd benchmarks && PYTHONPATH=$OLD timeout 50 python3 bench_merge_norm_gpu.py --reps 20 --tiles "None") 2>&1 \
  | quiet | tee "$OUT/merge_norm_old.txt" | cut -c1-160
for v in old new; do
  echo "== merging layers, $v ($(left) s left)"
  (cd benchmarks && PYTHONPATH=$([ $v = old ] && echo $OLD || echo $NEW) timeout 60 python3 match_schedule_gpu.py \
    --models vim_tiny_patch16_224,vim_small_patch16_224 --reps 9) 2>&1 | quiet | tee "$OUT/layers_$v.txt" \
    | grep "total\|==" | cut -c1-200
done
for v in old new old new; do
  L=$(left); [ "$L" -lt 330 ] && break
  echo "== Vim-Ti, S graphed, $v ($L s left)"
  PYTHONPATH=$([ $v = old ] && echo $OLD || echo $NEW) timeout 60 python3 -m rmeeto bench vim_tiny_patch16_224 \
    vim_small_patch16_224 --preset paper --modes cudagraph --rounds 2 2>&1 | quiet | tee -a "$OUT/bench_$v.txt" \
    | grep -i "cudagraph\|error" | cut -c1-170
done
export PYTHONPATH=$NEW
L=$(left); echo "== GPU tests: merge, plans, launches, models ($L s left)"
OUT=$OUT/tests WORKERS=16 LIMIT_S=$(( L - 15 )) bash benchmarks/gpu_tests.sh tests/ops/test_merge_fused.py \
  tests/ops/test_gpu_plan.py tests/ops/test_merge_host.py tests/ops/test_gpu_launch.py tests/models/test_gpu_model.py
echo "done, $(left) s left"

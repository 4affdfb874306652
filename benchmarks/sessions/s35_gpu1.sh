#!/usr/bin/env bash
# Thirty-fifth session, call 1 (session 34's call 4, cut off with its machine, again; its script is folded into this
# one): the GPU tests of the projection and the plans on the final tree (Vim-B-width whole-wave rule included); the
# table's x_proj + dt_proj tilings at Vim-B's width on the tree before session 34 (.ab/old/src: `git archive 51ecade
# src | tar -x -C .ab/old`) and on this one (session 34 call 3 measured them at 120-152 us against session 17's
# 83-99); then whole graphed Vim-B with the rule on (proj.PROJ_WAVE_WIDE_PER_SM=2) and off (None), alternating. Packed
# into one archive at the end.
#   bash benchmarks/sessions/s35_gpu1.sh        (OUT=out/s35a by default; about 540 s)
set -uo pipefail
OUT=${OUT:-out/s35a} BUDGET_S=${BUDGET_S:-540} source benchmarks/_session.sh
echo "== GPU tests: proj, plans ($(left) s left)"
OUT=$OUT/tests WORKERS=16 LIMIT_S=150 bash benchmarks/gpu_tests.sh tests/ops/test_gpu_proj.py tests/ops/test_gpu_plan.py
gzip -f "$OUT/tests/log.txt"
CFG="128,64,64,4,2;64,64,64,4,2;128,64,64,8,3;64,64,128,4,3"
for tree in .ab/old/src src; do
  echo "== proj tilings at Vim-B's width, $tree ($(left) s left)"
  (cd benchmarks && PYTHONPATH=$OLDPWD/$tree timeout 70 python3 bench_proj_gpu.py --dims 1536 --lengths 186,164,142 \
    --configs "$CFG" --reps 15) 2>&1 | quiet | tee "$OUT/proj_b_$(echo $tree | tr / _).txt" | grep -v "^   best"
done
for v in 2 None 2 None; do
  L=$(left); [ "$L" -lt 75 ] && break
  echo "== Vim-B graphed, proj.PROJ_WAVE_WIDE_PER_SM=$v ($L s left)"
  timeout 75 python3 benchmarks/bench_set.py --set proj.PROJ_WAVE_WIDE_PER_SM=$v -- bench vim_base_patch16_224 \
    --preset paper --modes cudagraph --rounds 2 2>&1 | quiet | tee -a "$OUT/bench_b_wave_$v.txt" \
    | grep -i "cudagraph\|error" | cut -c1-170
done
echo "done, $(left) s left"
tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz --warning=no-file-changed . ; find "$OUT" -type f ! -name all.tar.gz -delete

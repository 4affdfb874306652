#!/usr/bin/env bash
# Thirty-fourth session, call 3: x_proj + dt_proj in whole waves on Hopper (proj.PROJ_WAVE_PER_SM = 3 against None,
# the rule off): the GPU tests of the kernels it touches (proj, the plans, the TMA GEMMs through the shared SM
# count), then whole graphed Vim-S in alternating processes; Vim-B's width swept as time allows. Everything under
# $OUT is packed into one archive at the end.
#   bash benchmarks/sessions/s34_gpu3.sh        (OUT=out/s34c by default; about 480 s)
set -uo pipefail
OUT=${OUT:-out/s34c} BUDGET_S=${BUDGET_S:-480} source benchmarks/_session.sh
echo "== GPU tests: proj, plans, in_proj / out_proj, launch ($(left) s left)"
OUT=$OUT/tests WORKERS=16 LIMIT_S=170 bash benchmarks/gpu_tests.sh tests/ops/test_gpu_proj.py \
  tests/ops/test_gpu_plan.py tests/ops/test_gpu_inproj.py tests/ops/test_gpu_outproj.py tests/ops/test_gpu_launch.py
gzip -f "$OUT/tests/log.txt"
for v in 3 None 3 None; do
  L=$(left); [ "$L" -lt 60 ] && break
  echo "== Vim-S graphed, proj.PROJ_WAVE_PER_SM=$v ($L s left)"
  timeout 70 python3 benchmarks/bench_set.py --set proj.PROJ_WAVE_PER_SM=$v -- bench vim_small_patch16_224 \
    --preset paper --modes cudagraph --rounds 2 2>&1 | quiet | tee -a "$OUT/bench_wave_$v.txt" \
    | grep -i "cudagraph\|error" | cut -c1-170
done
L=$(left)
if [ "$L" -gt 50 ]; then
  echo "== proj balanced at Vim-B's width ($L s left)"
  (cd benchmarks && timeout $(( L - 10 )) python3 proj_balance_gpu.py --dims 1536 --per-sm 1,2,3,4) 2>&1 | quiet \
    | tee "$OUT/proj_balance_b.txt" | grep -E "^#|best:" | cut -c1-200
fi
echo "done, $(left) s left"
tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz --warning=no-file-changed . ; find "$OUT" -type f ! -name all.tar.gz -delete

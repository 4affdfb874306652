#!/usr/bin/env bash
# Thirty-fifth session, call 2: ROWS a constexpr in the projection kernel (a runtime one cost Vim-B-width tiles 52 more
# registers under Triton 3.6), the Vim-B-width whole-wave rule off. The proj and plan GPU tests; the table's tilings
# at Vim-B's width again (against call 1's old-tree 97.8 / 88.2 / 83.3 us); whole waves at that width with the
# constexpr ROWS (8 warps, 4 warps, 4 warps capped at 168 registers); whole graphed Vim-B with the wide rule off and
# on; all three models eager and graphed in one run. Packed into one archive at the end.
#   bash benchmarks/sessions/s35_gpu2.sh        (OUT=out/s35b by default; about 540 s)
set -uo pipefail
OUT=${OUT:-out/s35b} BUDGET_S=${BUDGET_S:-540} source benchmarks/_session.sh
echo "== GPU tests: proj, plans ($(left) s left)"
OUT=$OUT/tests WORKERS=16 LIMIT_S=110 bash benchmarks/gpu_tests.sh tests/ops/test_gpu_proj.py tests/ops/test_gpu_plan.py
gzip -f "$OUT/tests/log.txt"
echo "== proj tilings at Vim-B's width ($(left) s left)"
(cd benchmarks && timeout 70 python3 bench_proj_gpu.py --dims 1536 --lengths 186,164,142 \
  --configs "128,64,64,4,2;64,64,64,4,2;128,64,64,8,3;64,64,128,4,3" --reps 15) 2>&1 | quiet \
  | tee "$OUT/proj_b.txt" | grep -v "^   best"
echo "== whole waves at Vim-B's width ($(left) s left)"
(cd benchmarks && timeout 150 python3 proj_balance_gpu.py --dims 1536 --lengths 186,175,164,153,142,131,120,109 \
  --shapes 0,1,2 --per-sm 2) 2>&1 | quiet | tee "$OUT/proj_balance_b.txt" | cut -c1-230
for v in None 2; do
  L=$(left); [ "$L" -lt 200 ] && break
  echo "== Vim-B graphed, proj.PROJ_WAVE_WIDE_PER_SM=$v ($L s left)"
  timeout 75 python3 benchmarks/bench_set.py --set proj.PROJ_WAVE_WIDE_PER_SM=$v -- bench vim_base_patch16_224 \
    --preset paper --modes cudagraph --rounds 2 2>&1 | quiet | tee -a "$OUT/bench_b_wave_$v.txt" \
    | grep -i "cudagraph\|error" | cut -c1-170
done
L=$(left)
if [ "$L" -gt 60 ]; then
  echo "== all three models, eager and graphed ($L s left)"
  timeout $(( L - 10 )) python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224 \
    --preset paper --modes eager,cudagraph --rounds 2 2>&1 | quiet | tee "$OUT/bench_all.txt" \
    | grep -i "eager\|cudagraph\|error" | cut -c1-170
fi
echo "done, $(left) s left"
tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz --warning=no-file-changed . ; find "$OUT" -type f ! -name all.tar.gz -delete

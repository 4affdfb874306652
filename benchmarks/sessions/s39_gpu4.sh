#!/usr/bin/env bash
# Thirty-ninth session, call 4: (1) GPU tests of the TMA GEMM's users (sum + out_proj with the row-half split, in_proj,
# plans, launches, whole models against the reference path); (2) tail_split_gpu.py at Vim-B's width with the final
# rule (auto); (3) whole graphed Vim-B with the split off (TAIL_SPLIT_MIN_K huge) and on, alternating processes.
#   bash benchmarks/sessions/s39_gpu4.sh        (OUT=out/s39d by default; about 560 s)
set -uo pipefail
OUT=${OUT:-out/s39d} BUDGET_S=${BUDGET_S:-565} source benchmarks/_session.sh
echo "== 1. GPU tests ($(left) s left)"
OUT="$OUT/tests" WORKERS=16 LIMIT_S=200 bash benchmarks/gpu_tests.sh tests/ops/test_gpu_outproj.py \
  tests/ops/test_gpu_inproj.py tests/ops/test_gpu_plan.py tests/ops/test_gpu_launch.py tests/models/test_gpu_model.py
tail -4 "$OUT/tests/log.txt"; grep -E "FAILED|ERROR" "$OUT/tests/log.txt" | head -10
echo "== 2. tail split, Vim-B ($(left) s left)"
(cd benchmarks && timeout 60 python3 tail_split_gpu.py --models B --splits 1,2 --reps 12) 2>&1 | quiet \
  | tee "$OUT/tail_split_b.txt" | grep -v "^  L="
i=0
for v in 999999 1536 999999 1536; do
  i=$((i + 1)); L=$(left); [ "$L" -lt 70 ] && break
  echo "== 3.$i Vim-B graphed, tma_gemm.TAIL_SPLIT_MIN_K=$v ($L s left)"
  timeout $(( L - 8 )) python3 benchmarks/bench_set.py --set tma_gemm.TAIL_SPLIT_MIN_K=$v -- bench \
    vim_base_patch16_224 --preset paper --modes cudagraph --rounds 3 --json "$OUT/ab_b_${v}_$i.json" 2>&1 | quiet \
    | tee "$OUT/ab_b_${v}_$i.txt" | grep -i "cudagraph\|error\|ratio" | cut -c1-220
done
echo "done, $(left) s left"
tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz --warning=no-file-changed . ; find "$OUT" -type f ! -name all.tar.gz -delete

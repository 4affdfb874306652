#!/usr/bin/env bash
# Thirty-ninth session, call 9, the final tree (the sum + out_proj before a merge and its matching in one launch):
# (1) GPU tests of the prepared paths, whole models and the merge; (2) whole graphed Vim-Ti with the one launch off
# and on, alternating processes; (3) issue 14's inference targets, Vim-Ti / S / B eager and graphed.
#   bash benchmarks/sessions/s39_gpu9.sh        (OUT=out/s39i by default; about 500 s)
set -uo pipefail
OUT=${OUT:-out/s39i} BUDGET_S=${BUDGET_S:-560} source benchmarks/_session.sh
echo "== 1. GPU tests ($(left) s left)"
OUT="$OUT/tests" WORKERS=16 LIMIT_S=190 bash benchmarks/gpu_tests.sh tests/ops/test_gpu_plan.py \
  tests/models/test_gpu_model.py tests/ops/test_merge_fused.py tests/ops/test_gpu_pdl.py
tail -3 "$OUT/tests/log.txt"; grep -E "FAILED|ERROR" "$OUT/tests/log.txt" | head -10
i=0
for v in 0 1 0 1; do
  i=$((i + 1)); L=$(left); [ "$L" -lt 200 ] && break
  echo "== 2.$i Vim-Ti graphed, RMEETO_FUSED_OUTPROJ_MATCH=$v ($L s left)"
  RMEETO_FUSED_OUTPROJ_MATCH=$v timeout 60 python3 -m rmeeto bench vim_tiny_patch16_224 --preset paper \
    --modes cudagraph --rounds 3 --json "$OUT/ab_ti_${v}_$i.json" 2>&1 | quiet | grep -i "cudagraph\|error" | cut -c1-200
done
L=$(left); echo "== 3. Vim-Ti, S, B: cudagraph, eager ($L s left)"
timeout $(( L - 12 )) python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224 \
  --preset paper --modes cudagraph,eager --rounds 5 --repeats 90 --json "$OUT/bench.json" 2>&1 | quiet \
  | tee "$OUT/bench.txt" | grep -i "eager\|cudagraph\|error" | cut -c1-200
echo "done, $(left) s left"
tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz --warning=no-file-changed . ; find "$OUT" -type f ! -name all.tar.gz -delete

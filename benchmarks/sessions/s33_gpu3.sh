#!/usr/bin/env bash
# Thirty-third session, call 3, the final tree: every GPU test; all three models eager and graphed in one run; the
# training step (merged Vim-S student + teacher, bf16, graphed: the teacher's graph now reads the float32 images
# in place through the fused embedding). Everything written under $OUT is packed into one archive at the end.
#   bash benchmarks/sessions/s33_gpu3.sh        (OUT=out/s33c by default; about 560 s)
set -uo pipefail
OUT=${OUT:-out/s33c} BUDGET_S=${BUDGET_S:-560} source benchmarks/_session.sh
echo "== every GPU test ($(left) s left)"
OUT=$OUT/tests WORKERS=16 LIMIT_S=370 bash benchmarks/gpu_tests.sh tests
gzip -f "$OUT/tests/log.txt"
L=$(left)
if [ "$L" -gt 60 ]; then
  echo "== all three models, eager and graphed ($L s left)"
  timeout $(( L - 40 )) python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224 \
    --preset paper --modes eager,cudagraph --rounds 2 2>&1 | quiet | tee "$OUT/bench_all.txt" \
    | grep -i "eager\|cudagraph\|error" | cut -c1-170
fi
L=$(left)
if [ "$L" -gt 30 ]; then
  echo "== training step, Vim-S, graphed ($L s left)"
  timeout $(( L - 5 )) python3 -m rmeeto bench vim_small_patch16_224 --train --no-inference --modes cudagraph \
    --train-repeats 3 2>&1 | quiet | tee "$OUT/bench_train.txt" | grep -i "cudagraph\|error" | cut -c1-170
fi
echo "done, $(left) s left"
tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz . && find "$OUT" -type f ! -name all.tar.gz -delete

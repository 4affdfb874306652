#!/usr/bin/env bash
# Thirty-first session, call 3: every GPU test on the final tree, then whole graphed Vim-B once.
#   bash benchmarks/sessions/s31_gpu3.sh        (OUT=out/s31c by default; about 500 s)
set -uo pipefail
OUT=${OUT:-out/s31c} BUDGET_S=${BUDGET_S:-520} source benchmarks/_session.sh
echo "== every GPU test ($(left) s left)"
OUT=$OUT/tests WORKERS=16 LIMIT_S=420 bash benchmarks/gpu_tests.sh tests
L=$(left)
if [ "$L" -gt 45 ]; then
  echo "== Vim-B graphed ($L s left)"
  timeout $(( L - 5 )) python3 -m rmeeto bench vim_base_patch16_224 --preset paper --modes cudagraph --rounds 2 2>&1 \
    | quiet | tee -a "$OUT/bench_b.txt" | grep -i "cudagraph\|error" | cut -c1-170
fi
echo "done, $(left) s left"

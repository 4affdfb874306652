#!/usr/bin/env bash
# Twenty-fifth session, call 7: programmatic dependent launch of the inference kernels (RMEETO_PDL=1): its GPU test
# (same logits bit for bit), then whole Vim-Ti / S with it off and on, alternating.
#   bash benchmarks/sessions/s25_gpu5.sh        (OUT=out/s25e by default; about 330 s)
set -uo pipefail
OUT=${OUT:-out/s25e} BUDGET_S=${BUDGET_S:-340} source benchmarks/_session.sh
export PYTHONPATH=$PWD/src
echo "== 1. GPU tests: PDL, sum + out_proj"
OUT=$OUT/tests WORKERS=4 LIMIT_S=130 bash benchmarks/gpu_tests.sh tests/ops/test_gpu_pdl.py tests/ops/test_gpu_outproj.py
for v in 0 1 0 1; do
  L=$(left); echo "== 2. Vim-Ti, S, graphed and eager, RMEETO_PDL=$v ($L s left)"
  [ "$L" -lt 50 ] && break
  RMEETO_PDL=$v timeout $(( L - 5 < 60 ? L - 5 : 60 )) python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 \
    --preset paper --modes cudagraph,eager --rounds 3 2>&1 | quiet | tee -a "$OUT/bench_pdl$v.txt" | grep -i "eager\|cudagraph\|error" | cut -c1-170
done
echo "done, $(left) s left"

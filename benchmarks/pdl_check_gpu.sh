#!/usr/bin/env bash
# What programmatic dependent launch (RMEETO_PDL=1) still needs before it can be the default on Hopper: every GPU
# test with it on, then eager and graphed Vim-Ti / S with it off and on in alternating processes (session 25 saw
# eager host-bound runs vanish with it on one host: is that so on others?).
#   bash benchmarks/pdl_check_gpu.sh        (OUT=out/pdl_check by default; about 560 s on a fresh machine)
set -uo pipefail
OUT=${OUT:-out/pdl_check} BUDGET_S=${BUDGET_S:-580} source benchmarks/_session.sh
export PYTHONPATH=$PWD/src
echo "== 1. every GPU test, RMEETO_PDL=1"
RMEETO_PDL=1 OUT=$OUT/tests WORKERS=16 LIMIT_S=360 bash benchmarks/gpu_tests.sh tests
for v in 0 1 0 1 0 1; do
  L=$(left); echo "== 2. Vim-Ti, S, eager and graphed, RMEETO_PDL=$v ($L s left)"
  [ "$L" -lt 50 ] && break
  RMEETO_PDL=$v timeout $(( L - 5 < 60 ? L - 5 : 60 )) python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 \
    --preset paper --modes eager,cudagraph --rounds 3 2>&1 | quiet | tee -a "$OUT/bench_pdl$v.txt" | grep -i "eager\|cudagraph\|error" | cut -c1-170
done
echo "done, $(left) s left"

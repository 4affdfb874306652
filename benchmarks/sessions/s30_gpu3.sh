#!/usr/bin/env bash
# Thirtieth session, call 3: every GPU test on the final tree; the sum + out_proj kernel's tiles by rows against
# the one tiling at every Vim-Ti token count; whole graphed Vim-Ti / S, the tree before this session (.ab/base/src)
# against this one, alternating; whole graphed Vim-B once.
#   mkdir -p .ab/base && git archive 882f046 src | tar -x -C .ab/base
#   bash benchmarks/sessions/s30_gpu3.sh        (OUT=out/s30c by default; about 580 s)
set -uo pipefail
OUT=${OUT:-out/s30c} BUDGET_S=${BUDGET_S:-580} source benchmarks/_session.sh
FINAL=$PWD/src BASE=$PWD/.ab/base/src
echo "== every GPU test ($(left) s left)"
OUT=$OUT/tests WORKERS=16 LIMIT_S=420 bash benchmarks/gpu_tests.sh tests
echo "== sum + out_proj, tiles by rows against 128 x 128 at every Vim-Ti token count ($(left) s left)"
(cd benchmarks && timeout 40 python3 bench_outproj_gpu.py --dims 384x192 --table --reps 15 --configs "128,128,64,4,3") \
  2>&1 | quiet | tee "$OUT/outproj_tiles.txt" | grep "table\|merged" | cut -c1-250
for v in final base final base final; do
  L=$(left); [ "$L" -lt 50 ] && break
  echo "== Vim-Ti, S graphed, $v ($L s left)"
  PYTHONPATH=$([ $v = base ] && echo $BASE || echo $FINAL) timeout $(( L - 5 )) python3 -m rmeeto bench \
    vim_tiny_patch16_224 vim_small_patch16_224 --preset paper --modes cudagraph --rounds 2 2>&1 | quiet \
    | tee -a "$OUT/bench_$v.txt" | grep -i "cudagraph\|error" | cut -c1-170
done
L=$(left)
if [ "$L" -gt 45 ]; then
  echo "== Vim-B graphed, final ($L s left)"
  timeout $(( L - 5 )) python3 -m rmeeto bench vim_base_patch16_224 --preset paper --modes cudagraph --rounds 2 2>&1 \
    | quiet | tee -a "$OUT/bench_b.txt" | grep -i "cudagraph\|error" | cut -c1-170
fi
echo "done, $(left) s left"

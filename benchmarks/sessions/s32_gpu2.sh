#!/usr/bin/env bash
# Thirty-second session, call 2: the GPU tests of the in_proj TMA tiles, the launcher, the plans, the projections
# and the whole models; then whole Vim-Ti, eager and graphed, with the tiles off / on (RMEETO_FUSED_INPROJ),
# alternating processes; then in_proj by backend once more, eager through the plan's launcher.
#   bash benchmarks/sessions/s32_gpu2.sh        (OUT=out/s32b by default; about 570 s)
set -uo pipefail
OUT=${OUT:-out/s32b} BUDGET_S=${BUDGET_S:-570} source benchmarks/_session.sh
echo "== GPU tests: in_proj, launcher, plans, out_proj, whole models ($(left) s left)"
OUT=$OUT/tests WORKERS=16 LIMIT_S=220 bash benchmarks/gpu_tests.sh tests/ops/test_gpu_inproj.py \
  tests/ops/test_gpu_launch.py tests/ops/test_gpu_plan.py tests/ops/test_gpu_outproj.py tests/models/test_gpu_model.py
for v in 1 0 1 0; do
  L=$(left); [ "$L" -lt 60 ] && break
  echo "== Vim-Ti eager + graphed, RMEETO_FUSED_INPROJ=$v ($L s left)"
  RMEETO_FUSED_INPROJ=$v timeout $(( L - 5 )) python3 -m rmeeto bench vim_tiny_patch16_224 --preset paper \
    --modes eager,cudagraph --rounds 2 2>&1 | quiet | tee -a "$OUT/bench_inproj$v.txt" \
    | grep -i "eager\|cudagraph\|error" | cut -c1-170
done
for v in 1 0; do
  L=$(left); [ "$L" -lt 40 ] && break
  echo "== Vim-Ti eager at batch 8 (host-bound), RMEETO_FUSED_INPROJ=$v ($L s left)"
  RMEETO_FUSED_INPROJ=$v timeout $(( L - 5 )) python3 -m rmeeto bench vim_tiny_patch16_224 --preset paper \
    --modes eager --batch-size 8 --rounds 2 2>&1 | quiet | tee -a "$OUT/bench_b8_inproj$v.txt" \
    | grep -i "eager\|error" | cut -c1-170
done
echo "done, $(left) s left"

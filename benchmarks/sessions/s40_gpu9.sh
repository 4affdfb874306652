#!/usr/bin/env bash
# Fortieth session, call 9: the GPU tests of the projection, plans and launches on the final tree (the plan's fixed
# x_dbl row).
set -uo pipefail
OUT=${OUT:-out/s40i} BUDGET_S=${BUDGET_S:-300} source benchmarks/_session.sh
L=$(left)
OUT=$OUT/tests WORKERS=16 LIMIT_S=$(( L - 20 )) bash benchmarks/gpu_tests.sh tests/ops/test_gpu_proj.py \
  tests/ops/test_gpu_plan.py tests/ops/test_gpu_launch.py tests/models/test_gpu_model.py 2>&1 | tail -12
echo "done, $(left) s left"
tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz --warning=no-file-changed . ; find "$OUT" -type f ! -name all.tar.gz -delete

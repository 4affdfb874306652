#!/usr/bin/env bash
# Thirty-second session, call 7: the GPU tests of the GEMM kernels (in_proj, sum + out_proj now with TMA tiles at
# Vim-B's width, projections), the plans, the launcher and the whole models; then whole graphed Vim-B with the
# sum + out_proj TMA tiles up to 128 x 175 rows (the rule), at every layer, and never (add + cuBLAS), alternating;
# then all three models in one run.
#   bash benchmarks/sessions/s32_gpu5.sh        (OUT=out/s32e by default; about 400 s)
set -uo pipefail
OUT=${OUT:-out/s32e} BUDGET_S=${BUDGET_S:-400} source benchmarks/_session.sh
echo "== GPU tests: GEMM kernels, plans, launcher, whole models ($(left) s left)"
OUT=$OUT/tests WORKERS=16 LIMIT_S=170 bash benchmarks/gpu_tests.sh tests/ops/test_gpu_outproj.py \
  tests/ops/test_gpu_inproj.py tests/ops/test_gpu_proj.py tests/ops/test_gpu_plan.py tests/ops/test_gpu_launch.py \
  tests/models/test_gpu_model.py
bench_with() {  # $1: TMA_MAX_ROWS for the run, then rmeeto's arguments
  python3 - "$@" <<'PY'
import sys
from rmeeto.ops.triton import outproj
outproj.TMA_MAX_ROWS = int(sys.argv[1])
from rmeeto.cli import main
sys.exit(main(sys.argv[2:]))
PY
}
for v in 22400 0 1000000 22400 0 1000000; do
  L=$(left); [ "$L" -lt 90 ] && break
  echo "== Vim-B graphed, TMA_MAX_ROWS=$v ($L s left)"
  timeout 60 bash -c "$(declare -f bench_with); bench_with $v bench vim_base_patch16_224 --preset paper \
    --modes cudagraph --rounds 2" 2>&1 | quiet | tee -a "$OUT/bench_b_rows$v.txt" | grep -i "cudagraph\|error" \
    | cut -c1-170
done
L=$(left)
if [ "$L" -gt 50 ]; then
  echo "== all three models, eager and graphed ($L s left)"
  timeout $(( L - 5 )) python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224 \
    --preset paper --modes eager,cudagraph --rounds 3 2>&1 | quiet | tee "$OUT/bench_all.txt" | grep -i "eager\|cudagraph\|error" \
    | cut -c1-170
fi
echo "done, $(left) s left"

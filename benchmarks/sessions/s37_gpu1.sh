#!/usr/bin/env bash
# Thirty-seventh session, call 1: the prepared launches calling Triton's C launch function directly with addresses
# (_launch.Launcher, RMEETO_DIRECT_LAUNCH). Its GPU tests (launch, plans, in/out_proj, embed, whole models), then the
# host time A/B in one process (launch_ab_gpu.py, with a Vim-S block's host time in parts), then every model eager
# in one run (rmeeto bench, 5 rounds). Packed into one archive at the end.
#   bash benchmarks/sessions/s37_gpu1.sh        (OUT=out/s37a by default; about 450 s)
set -uo pipefail
OUT=${OUT:-out/s37a} source benchmarks/_session.sh
echo "== GPU tests ($(left) s left)"
OUT=$OUT/tests WORKERS=16 LIMIT_S=140 bash benchmarks/gpu_tests.sh tests/ops/test_gpu_inproj.py \
  tests/ops/test_gpu_outproj.py tests/ops/test_gpu_plan.py tests/ops/test_gpu_embed.py tests/ops/test_gpu_launch.py \
  tests/models/test_gpu_model.py
gzip -f "$OUT/tests/log.txt"
timeout 60 python3 -m pytest -q -p no:cacheprovider -p no:benchmark tests/ops/test_launch.py 2>&1 | tail -3
echo "== direct launch A/B ($(left) s left)"
timeout 150 python3 benchmarks/launch_ab_gpu.py --pieces --rounds 4 --tries 20 2>&1 | quiet | tee "$OUT/launch_ab.txt"
echo "== eager bench ($(left) s left)"
timeout $(( $(left) - 15 )) python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224 \
  --preset paper --modes eager,cudagraph --rounds 5 --json "$OUT/bench.json" 2>&1 | quiet | tee "$OUT/bench.txt"
echo "done"
tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz --warning=no-file-changed . ; find "$OUT" -type f ! -name all.tar.gz -delete

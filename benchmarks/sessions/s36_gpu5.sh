#!/usr/bin/env bash
# Thirty-sixth session, call 5: the TMA GEMM's descriptors kept per thread (tma_gemm.Gemm). The GPU tests of every
# path that launches it (in_proj, out_proj, plans, launches, the embedding's eager = graphed, whole models), then the
# host issue time of eager merged Vim-Ti / S with the descriptors kept against made per call, alternating in one
# process (gemm_desc_ab_gpu.py). Packed into one archive at the end.
#   bash benchmarks/sessions/s36_gpu5.sh        (OUT=out/s36e by default; about 220 s)
set -uo pipefail
OUT=${OUT:-out/s36e} source benchmarks/_session.sh
echo "== GPU tests ($(left) s left)"
OUT=$OUT/tests WORKERS=16 LIMIT_S=130 bash benchmarks/gpu_tests.sh tests/ops/test_gpu_inproj.py \
  tests/ops/test_gpu_outproj.py tests/ops/test_gpu_plan.py tests/ops/test_gpu_embed.py tests/ops/test_gpu_launch.py \
  tests/models/test_gpu_model.py
gzip -f "$OUT/tests/log.txt"
echo "== descriptors kept / made per call ($(left) s left)"
timeout 80 python3 benchmarks/gemm_desc_ab_gpu.py --rounds 4 --tries 20 2>&1 | quiet | tee "$OUT/desc_ab.txt"
echo "done"
tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz --warning=no-file-changed . ; find "$OUT" -type f ! -name all.tar.gz -delete

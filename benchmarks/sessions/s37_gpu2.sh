#!/usr/bin/env bash
# Thirty-seventh session, call 2: the mixer plan's direct path (MixerPlan._call_direct: one allocation for the
# activations, addresses instead of views) on top of call 1's direct launches. Every GPU test, the launch tests on
# Triton 3.6, then the host time of eager forwards in three variants alternating in one process (launch_ab_gpu.py:
# off / direct launches / both), with a Vim-S block's host time in parts. Packed into one archive at the end.
#   bash benchmarks/sessions/s37_gpu2.sh        (OUT=out/s37b by default; about 560 s)
set -uo pipefail
OUT=${OUT:-out/s37b} BUDGET_S=${BUDGET_S:-575} source benchmarks/_session.sh
echo "== every GPU test ($(left) s left)"
OUT=$OUT/tests WORKERS=16 LIMIT_S=420 bash benchmarks/gpu_tests.sh tests
gzip -f "$OUT/tests/log.txt"
timeout 60 python3 -m pytest -q -p no:cacheprovider -p no:benchmark tests/ops/test_launch.py \
  tests/ops/test_mixer_direct.py 2>&1 | tail -2
L=$(left); echo "== host time: off / launch / all ($L s left)"
[ "$L" -gt 40 ] && timeout $(( L - 8 )) python3 benchmarks/launch_ab_gpu.py --pieces --rounds 3 --tries 20 2>&1 \
  | quiet | tee "$OUT/launch_ab.txt" | grep -v "round"
echo "done, $(left) s left"
tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz --warning=no-file-changed . ; find "$OUT" -type f ! -name all.tar.gz -delete

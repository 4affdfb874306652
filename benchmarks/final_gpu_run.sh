#!/usr/bin/env bash
# The GPU measurements of benchmarks/RESULTS.md (session 3 tables), on the device machine:
#   bash benchmarks/final_gpu_run.sh tests    # every GPU test (about 5 minutes on an H100)
#   bash benchmarks/final_gpu_run.sh bench    # inference of Vim-Ti/S/B, the training step, an inference profile
# Writes logs and JSON under $OUT (default out/gpu).
set -uo pipefail
OUT=${OUT:-out/gpu}; mkdir -p "$OUT"
export PYTHONPATH=src PYTHONUNBUFFERED=1
python3 -c 'import pytest' 2>/dev/null || {
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=src:/tmp/site; }
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/gpu.txt"
case ${1:-bench} in
  tests)
    timeout 560 python3 -m pytest -q tests/test_gpu_scan.py tests/test_merge_fused.py tests/test_gpu_model.py 2>&1 \
      | tee "$OUT/tests.log" | tail -n 4 ;;
  bench)
    [ -n "${TESTS:-}" ] && timeout 200 python3 -m pytest -q $TESTS 2>&1 | tee "$OUT/tests_extra.log" | tail -n 3
    timeout 200 python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224 --mode cudagraph --batch-size 128 \
      --dtype fp16 --warmup 10 --repeats 50 --json "$OUT/bench_inference.json" 2>&1 | tee "$OUT/bench.log"
    timeout 150 python3 -m rmeeto bench vim_small_patch16_224 --train --no-inference --mode cudagraph --batch-size 128 --train-repeats 10 \
      --json "$OUT/bench_train.json" 2>&1 | grep -v "Warning\|return Variable" | tee "$OUT/train.log"
    timeout 100 python3 benchmarks/profile_gpu.py --what inference --rows 14 > "$OUT/profile.txt" 2>&1
    grep "^# vim" "$OUT/profile.txt" ;;
esac

#!/usr/bin/env bash
# Everything the GPU issue measures, in one device call (writes logs and JSON under $OUT).
#   bash benchmarks/gpu_suite.sh [tests|bench|train|all]
set -uo pipefail
OUT=${OUT:-out/gpu}; mkdir -p "$OUT"
export PYTHONPATH=src PYTHONUNBUFFERED=1
what=${1:-all}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
if [[ $what == tests || $what == all ]]; then
  python3 -m pytest -q -x tests/test_gpu_scan.py tests/test_gpu_model.py 2>&1 | tee "$OUT/tests.log" | tail -n 15
fi
if [[ $what == bench || $what == all ]]; then
  python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224 \
    --batch-size 128 --dtype fp16 --warmup 10 --repeats 50 --json "$OUT/bench_inference.json" 2>&1 | tee "$OUT/bench.log"
fi
if [[ $what == train || $what == all ]]; then
  python3 -m rmeeto bench vim_small_patch16_224 --preset paper --train --no-inference --batch-size 128 \
    --train-repeats 10 --json "$OUT/bench_train.json" 2>&1 | tee "$OUT/train.log"
fi

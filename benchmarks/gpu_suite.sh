#!/usr/bin/env bash
# Everything the GPU issue measures, in one device call (writes logs and JSON under $OUT).
#   bash benchmarks/gpu_suite.sh [tests|bench|train|profile|all]...
set -uo pipefail
OUT=${OUT:-out/gpu}; mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-src} PYTHONUNBUFFERED=1
python3 -c 'import pytest' 2>/dev/null || {
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
for what in "${@:-all}"; do
  case $what in tests|all)
    timeout 300 python3 -m pytest -q tests/test_gpu_model.py tests/test_gpu_scan.py 2>&1 | tee "$OUT/tests.log" | tail -n 8 ;;
  esac
  case $what in bench|all)
    python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224 \
      --batch-size 128 --dtype fp16 --warmup 10 --repeats 50 --json "$OUT/bench_inference.json" 2>&1 | tee "$OUT/bench.log" ;;
  esac
  case $what in train|all)
    python3 -m rmeeto bench vim_small_patch16_224 --preset paper --train --no-inference --batch-size 128 \
      --train-repeats 10 --json "$OUT/bench_train.json" 2>&1 | tee "$OUT/train.log" ;;
  esac
  case $what in profile|all)
    python3 benchmarks/profile_gpu.py --merged --rows 15 2>&1 | tee "$OUT/profile.log" ;;
  esac
done

#!/usr/bin/env bash
# The measurements of benchmarks/RESULTS.md (session 3 table), in one device call: GPU tests, inference (all three models), training step, inference profile
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=src:/tmp/site
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 300 python3 -m pytest -q tests/test_merge_fused.py tests/test_gpu_model.py tests/test_gpu_scan.py -k "not lengths_fp32 and not sweep" 2>&1 | tee $OUT/tests.log | tail -n 3
timeout 200 python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224 --batch-size 128 \
  --dtype fp16 --warmup 10 --repeats 50 --json $OUT/bench_inference.json 2>&1 | tee $OUT/bench.log
timeout 150 python3 -m rmeeto bench vim_small_patch16_224 --train --no-inference --batch-size 128 --train-repeats 10 \
  --json $OUT/bench_train.json 2>&1 | grep -v "Warning\|return Variable" | tee $OUT/train.log
timeout 100 python3 benchmarks/profile_gpu.py --what inference --variants merged --rows 14 > $OUT/profile.txt 2>&1; grep "^# vim" $OUT/profile.txt

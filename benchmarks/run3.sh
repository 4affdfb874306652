#!/usr/bin/env bash
# device run 3 of session 3: GPU tests (merge, model, conv, graphs), inference bench, training A/B, profile, retrain
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
python3 -c 'import pytest' 2>/dev/null || {
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site; }
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 240 python3 -m pytest -q tests/test_merge_fused.py tests/test_gpu_model.py 2>&1 | tee $OUT/tests.log | tail -n 12
timeout 200 python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224 --batch-size 128 --dtype fp16 \
  --warmup 10 --repeats 50 --json $OUT/bench_inference.json 2>&1 | tee $OUT/bench.log
for mode in auto eager; do
  timeout 120 python3 -m rmeeto bench vim_small_patch16_224 --train --no-inference --batch-size 128 --mode $mode \
    --train-repeats 10 2>&1 | tee -a $OUT/train.log
done
timeout 150 python3 benchmarks/profile_gpu.py --what train --rows 25 > $OUT/profile.txt 2>&1; echo "profile rc $?"
OUT=/tmp/retrain timeout 240 bash benchmarks/retrain_gpu.sh 1 > $OUT/retrain.log 2>&1; echo "retrain rc $?"; tail -n 8 $OUT/retrain.log
cp /tmp/retrain/gpu1/log.jsonl $OUT/retrain_log.jsonl

#!/usr/bin/env bash
# device run 5 of session 3: conv backward tiles, fused norm, GPU tests, training A/B, inference
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=src:/tmp/site
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 200 python3 -m pytest -q tests/test_gpu_model.py 2>&1 | tee $OUT/tests.log | tail -n 4
timeout 300 python3 - <<'PY' 2>&1 | grep -v "Warning\|return Variable" | tee $OUT/train.log
import os, sys
sys.path.insert(0, "benchmarks")
import bench_conv_gpu
from rmeeto.bench import bench_train_step
from rmeeto.merge import MergeConfig
best = bench_conv_gpu.main([])
m = "vim_small_patch16_224"
for label, env in (("fused norm", "1"), ("PyTorch norm", "0")):
    os.environ["RMEETO_FUSED_NORM"] = env
    for cfg in (None, MergeConfig.paper(m)):
        r = bench_train_step(m, cfg, batch_size=128, repeats=10)
        print(f"train {label:<13} {'merged' if cfg else 'unmerged':<9} {r['images_per_s']:8.1f} img/s  "
              f"{r['ms_median']:.2f} ms (p10-p90 {r['ms_p10']:.2f}-{r['ms_p90']:.2f})  {r['device']}", flush=True)
os.environ["RMEETO_FUSED_NORM"] = "1"
PY
timeout 200 python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224 --batch-size 128 \
  --dtype fp16 --warmup 10 --repeats 50 --json $OUT/bench_inference.json 2>&1 | tee $OUT/bench.log

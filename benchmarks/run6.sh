#!/usr/bin/env bash
# device run 6 of session 3 (final): GPU tests, conv tiles + training step, inference, inference profile
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=src:/tmp/site
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 240 python3 -m pytest -q tests/test_merge_fused.py tests/test_gpu_model.py 2>&1 | tee $OUT/tests.log | tail -n 3
timeout 200 python3 - <<'PY' 2>&1 | grep -v "Warning\|return Variable" | tee $OUT/train.log
import sys
sys.path.insert(0, "benchmarks")
import bench_conv_gpu
from rmeeto.bench import bench_train_step
from rmeeto.merge import MergeConfig
bench_conv_gpu.main([])
m = "vim_small_patch16_224"
for cfg in (None, MergeConfig.paper(m)):
    r = bench_train_step(m, cfg, batch_size=128, repeats=10)
    print(f"train {'merged' if cfg else 'unmerged':<9} {r['images_per_s']:8.1f} img/s  {r['ms_median']:.2f} ms "
          f"(p10-p90 {r['ms_p10']:.2f}-{r['ms_p90']:.2f}) peak {r['peak_mem_mb']:.0f} MB  {r['device']}", flush=True)
PY
timeout 200 python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224 --batch-size 128 \
  --dtype fp16 --warmup 10 --repeats 50 --json $OUT/bench_inference.json 2>&1 | tee $OUT/bench.log
timeout 100 python3 benchmarks/profile_gpu.py --what inference --rows 16 > $OUT/profile.txt 2>&1; grep "^# vim" $OUT/profile.txt

#!/usr/bin/env bash
# Fifth session's GPU checks and measurements (issue 14 / 11), one phase per call (each under the device's
# 10-minute limit):  bash benchmarks/sessions/s5_gpu.sh tests|speed|modes     (OLD: the session-start tree, default .old5/src)
set -uo pipefail
PHASE=${1:?phase}; OUT=${OUT:-out/s5}; OLD=${OLD:-.old5/src}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-src}
quiet() { grep -v "Warning\|warn(\|return Variable\|_warn_once" ; }
case "$PHASE" in
tests)
  nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tee "$OUT/gpu.txt"
  timeout 330 python3 -m pytest -q -p no:cacheprovider tests/ops/test_gpu_launch.py tests/ops/test_gpu_bidir.py \
    tests/ops/test_gpu_scan.py tests/ops/test_merge_fused.py tests/models/test_gpu_model.py tests/ops/test_launch.py \
    2>&1 | tail -25 | tee "$OUT/tests.log"
  for src in "$OLD" src; do echo "== merge kernels, $src"
    PYTHONPATH=$src timeout 60 python3 benchmarks/bench_merge_gpu.py --video-schedule 2>&1 | quiet | tee "$OUT/merge_$(basename $(dirname $src)).txt"
  done ;;
speed)  # eager and graphed, old tree vs new tree, interleaved on one card
  for src in "$OLD" src; do echo "== $src"
    PYTHONPATH=$src timeout 100 python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224 \
      --mode eager --warmup 5 --repeats 20 2>&1 | quiet | grep -v "^$"
  done | tee "$OUT/eager_ab.txt"
  timeout 150 python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224 \
    --modes eager,cudagraph --json "$OUT/tsb.json" 2>&1 | quiet | tee "$OUT/tsb.txt"
  RMEETO_FAST_LAUNCH=0 timeout 60 python3 -m rmeeto bench vim_small_patch16_224 --modes eager --warmup 5 --repeats 20 \
    2>&1 | quiet | tee "$OUT/s_nofast.txt"
  timeout 120 python3 -m rmeeto bench videomamba_small_patch16_224_f8 --batch-size 32 --modes eager,cudagraph \
    --json "$OUT/video.json" 2>&1 | quiet | tee "$OUT/video.txt" ;;
modes)  # torch.compile, training step modes, profile
  timeout 240 python3 -m rmeeto bench vim_small_patch16_224 --modes compile --json "$OUT/s_compile.json" 2>&1 | quiet | tail -8 | tee "$OUT/s_compile.txt"
  timeout 150 python3 -m rmeeto bench vim_small_patch16_224 --train --no-inference --modes eager,cudagraph \
    --train-repeats 10 --json "$OUT/train.json" 2>&1 | quiet | tee "$OUT/train.txt"
  timeout 150 python3 benchmarks/profile_gpu.py --what inference --variants merged 2>&1 | quiet | tee "$OUT/profile.txt" | tail -40 ;;
failing)  # the failures of the tests phase, with their messages
  timeout 150 python3 -m pytest -q -p no:cacheprovider -x tests/models/test_gpu_model.py 2>&1 | tail -4 | tee "$OUT/gpu_model.log"
  timeout 120 python3 -m pytest -q -p no:cacheprovider --tb=line tests/ops/test_gpu_bidir.py 2>&1 \
    | grep -E "^/|^E |Error|passed|failed" | cut -c1-400 | tail -20 | tee "$OUT/bidir.log"
  timeout 150 python3 -m pytest -q -p no:cacheprovider --tb=line tests/ops/test_gpu_launch.py -k compiled 2>&1 \
    | grep -E "^/.*Error|^E |passed|failed" | cut -c1-400 | tail -8 | tee "$OUT/compiled.log" ;;
*) echo "unknown phase"; exit 2 ;;
esac

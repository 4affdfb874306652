#!/usr/bin/env bash
# Tenth session, second issue-14 call on one H200: is eager timing steady (probe at the start and at the end),
# the Ti/S/B inference and training-step rates with sum_directions (the training path's direction sum), and the
# GPU tests those changes touch (at the end, so they do not load the host during the timings).
set -uo pipefail
OUT=${OUT:-out/s10step}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-src}
quiet() { grep -v "Warning\|warn(\|return Variable\|_warn_once\|^$" ; }
B3=(vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224)
nvidia-smi --query-gpu=name --format=csv,noheader | head -1; cat /proc/loadavg
echo "== eager probe (start)"; timeout 90 python3 benchmarks/eager_probe.py 2>&1 | quiet
echo "== inference"; timeout 120 python3 -m rmeeto bench "${B3[@]}" --modes eager,cudagraph --warmup 5 --repeats 20 \
  --json "$OUT/inference.json" 2>&1 | quiet
echo "== training steps"; timeout 150 python3 -m rmeeto bench "${B3[@]}" --train --no-inference --modes eager,cudagraph \
  --train-repeats 6 --json "$OUT/steps.json" 2>&1 | quiet
echo "== eager probe (end)"; timeout 60 python3 benchmarks/eager_probe.py 2>&1 | quiet
echo "== GPU tests of the changed code"; cat /proc/loadavg
timeout ${TEST_S:-150} python3 -m pytest -m gpu -n 16 -q -p no:cacheprovider -p no:benchmark -rfE --tb=short \
  tests/ops/test_scan_bwd.py tests/ops/test_gpu_bidir.py tests/models/test_gpu_model.py tests/ops/test_gpu_launch.py \
  > "$OUT/tests.log" 2>&1; echo "pytest exit $?"
grep -E "^(FAILED|ERROR)|^E  |passed|failed" "$OUT/tests.log" | cut -c1-300 | tail -20

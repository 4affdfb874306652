#!/usr/bin/env bash
# Eighth session's GPU runs on a 2-GPU host, one phase per device call (each under the 10-minute limit).
#   bash benchmarks/sessions/s8_gpu.sh kernels   # GPU 0: inference (eager, graphed) of this tree and of the session-6 tree
#                                       # ($OLD) in the same call, then training steps (session 8 also timed
#                                       # RMEETO_SCAN_BC32, a switch since removed);
#                                       # GPU 1: the single-GPU test files; then the JPEG folder for 'minutes'
#   bash benchmarks/sessions/s8_gpu.sh minutes   # issue 13: real-JPEG epoch on 1 and on 2 GPUs, then the 2-GPU tests
# Eager numbers are host-bound: GPU 1's tests start only after GPU 0's eager runs are done, and the JPEG folder
# is written after both.
set -uo pipefail
PHASE=${1:?phase}; OUT=${OUT:-out/s8}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-src}
OLD=${OLD:-.old6/src}
quiet() { grep -v "Warning\|warn(\|return Variable\|_warn_once\|^$" ; }
M=(env OUT="$OUT/minutes" DATA=/tmp/imagenet_like WORKERS=${WORKERS:-15} PIPELINE=${PIPELINE:-cpu})
B3=(vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224)
case "$PHASE" in
kernels)
  nvidia-smi --query-gpu=name --format=csv,noheader | head -1
  rm -f /tmp/s8_eager_done
  (
    export CUDA_VISIBLE_DEVICES=0
    echo "== inference, this tree"; timeout 150 python3 -m rmeeto bench "${B3[@]}" --modes eager,cudagraph \
      --warmup 5 --repeats 20 --json "$OUT/inference.json" 2>&1 | quiet
    echo "== inference, $OLD"; PYTHONPATH=$OLD timeout 100 python3 -m rmeeto bench "${B3[@]:0:2}" \
      --modes eager,cudagraph --warmup 5 --repeats 20 2>&1 | quiet
    touch /tmp/s8_eager_done
    echo "== training steps, this tree"; timeout 150 python3 -m rmeeto bench "${B3[@]}" --train --no-inference \
      --modes eager,cudagraph --train-repeats 6 --json "$OUT/steps.json" 2>&1 | quiet
    [ "${PROFILE:-1}" = 1 ] && echo "== profile, merged Vim-S" && timeout 60 python3 benchmarks/profile_gpu.py --what inference,train \
      --variants merged --modes cudagraph --rows 10 2>&1 | quiet
  ) > "$OUT/g0.log" 2>&1 &
  G0=$!
  (
    export CUDA_VISIBLE_DEVICES=1
    while [ "${WAIT_EAGER:-1}" = 1 ] && [ ! -f /tmp/s8_eager_done ] && kill -0 $G0 2>/dev/null; do sleep 2; done
    timeout ${TEST_S:-420} python3 -m pytest -q -p no:cacheprovider -rf --tb=line ${GPU_TESTS:?} 2>&1 \
      | grep -v "^$\|Warning\|warn(" | cut -c1-300 | tail -60
  ) > "$OUT/g1.log" 2>&1 &
  G1=$!
  wait $G0
  # the JPEG folder for the next call (kept on the machine while it stays warm)
  [ "${MAKE_S:-200}" -gt 0 ] && (IMAGES=100000 VAL_IMAGES=10000 "${M[@]}" timeout ${MAKE_S:-200} bash benchmarks/minutes_gpu.sh make > "$OUT/make.log" 2>&1) &
  MK=$!
  wait $G1 $MK; tail -2 "$OUT/make.log" 2>/dev/null
  tail -5 "$OUT/g1.log" ;;
minutes)
  nvidia-smi --query-gpu=name --format=csv,noheader | head -1
  if [ "$(find /tmp/imagenet_like/val -name '*.jpg' 2>/dev/null | wc -l)" -lt 10000 ] \
     || [ "$(find /tmp/imagenet_like/train -name '*.jpg' | wc -l)" -lt 100000 ]; then
    echo "== writing the JPEG folder (the machine was not kept, or the last call ran out of time)"
    rm -rf /tmp/imagenet_like
    IMAGES=100000 VAL_IMAGES=10000 "${M[@]}" bash benchmarks/minutes_gpu.sh make > "$OUT/make.log" 2>&1
    tail -2 "$OUT/make.log"
  fi
  [ -f "${STEPS:-}" ] && mkdir -p "$OUT/minutes" && cp "$STEPS" "$OUT/minutes/steps.json"
  "${M[@]}" bash benchmarks/minutes_gpu.sh gpu1 2>&1 | quiet
  "${M[@]}" EXTRA=--ddp-graphs bash benchmarks/minutes_gpu.sh gpuN 2>&1 | quiet
  "${M[@]}" bash benchmarks/minutes_gpu.sh project 2>&1 | quiet
  timeout ${TEST_S:-240} python3 -m pytest -q -p no:cacheprovider -rf --tb=line tests/train/test_gpu_ddp.py \
    > "$OUT/tests_2gpu.log" 2>&1; echo "pytest exit $?"
  grep -E "^/|^E |Error|passed|failed" "$OUT/tests_2gpu.log" | cut -c1-300 | tail -15 ;;
*) echo "unknown phase"; exit 2 ;;
esac
find "$OUT" -name "*.pth" -delete  # checkpoints are too large to bring back; their writing is timed
# the device returns only a few files: everything in one archive
(cd "$OUT" && tar czf "/tmp/s8_$PHASE.tgz" . && rm -rf ./* && mv "/tmp/s8_$PHASE.tgz" .)

#!/usr/bin/env bash
# Eleventh session's device call (run on a 1-GPU host; on a host of several GPUs step 4b adds the torchrun epoch):
#   bash benchmarks/sessions/s11_gpu.sh
# 1. the GPU tests of the files this session touched (graphs captured before the first batch, RNG kept);
# 2. the ImageNet-like JPEG folder (100k train + 10k val, 1000 classes), timed;
# 3. the synthetic-data rate, same settings, 2 epochs (minutes_gpu.sh synth);
# 4. the real-JPEG epoch on 1 GPU (minutes_gpu.sh gpu1, CPU pipeline, 15 workers), timed whole, and on a host of
#    several GPUs the same under torchrun on all of them (minutes_gpu.sh gpuN);
# 5. the comparison and the 8-GPU projection (minutes_gpu.sh project; Ti / B scaled by $STEPS);
# 6. in the time left, the profile of Vim-S inference, graphed (where the unmerged model's time goes).
# Everything is under $OUT, packed into one archive at the end.
set -uo pipefail
OUT=${OUT:-out/s11}; mkdir -p "$OUT/minutes"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-src}
T0=$(date +%s); left() { echo $(( ${BUDGET_S:-575} - ($(date +%s) - T0) )); }
quiet() { grep -v "Warning\|warn(\|return Variable\|_warn_once\|^$" ; }
NG=$(nvidia-smi -L | wc -l)
M=(env OUT="$OUT/minutes" DATA=/tmp/imagenet_like WORKERS=${WORKERS:-15} PIPELINE=cpu NGPUS="$NG")
nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tee "$OUT/gpu.txt"
echo "== 1. GPU tests"
OUT="$OUT/tests" WORKERS=16 LIMIT_S=${TESTS_S:-200} bash benchmarks/gpu_tests.sh ${TESTS:-tests/train/test_gpu_train.py \
  tests/models/test_gpu_model.py tests/test_gpu_data_cuda.py tests/test_gpu_data.py} 2>&1 | tail -15
echo "== 2. JPEG folder ($(left) s left)"
t=$(date +%s); IMAGES=100000 VAL_IMAGES=10000 "${M[@]}" timeout 240 bash benchmarks/minutes_gpu.sh make > "$OUT/make.log" 2>&1
echo "exit $?, $(( $(date +%s) - t )) s"; tail -2 "$OUT/make.log"
echo "== 3. synthetic data ($(left) s left)"
"${M[@]}" timeout 120 bash benchmarks/minutes_gpu.sh synth 2>&1 | quiet
grep -h '"epoch"' "$OUT/minutes/synth/log.jsonl" | cut -c1-400
[ -f "${STEPS:-}" ] && cp "$STEPS" "$OUT/minutes/steps.json"
echo "== 4. real JPEGs, 1 GPU ($(left) s left)"
"${M[@]}" timeout $(( $(left) - 20 )) bash benchmarks/minutes_gpu.sh gpu1 2>&1 | quiet
if [ "$NG" -gt 1 ]; then
  echo "== 4b. real JPEGs, $NG GPUs ($(left) s left)"
  "${M[@]}" timeout $(( $(left) - 20 )) bash benchmarks/minutes_gpu.sh gpuN 2>&1 | quiet
fi
echo "== 5. projection"
"${M[@]}" bash benchmarks/minutes_gpu.sh project 2>&1 | quiet
L=$(left); echo "== 6. profile ($L s left)"
[ "$L" -gt 50 ] && timeout $(( L - 10 )) python3 benchmarks/profile_gpu.py --what inference \
  --variants unmerged,merged --modes cudagraph --rows 14 2>&1 | quiet | tee "$OUT/profile.txt" | tail -40
find "$OUT" -name "*.pth" -delete  # checkpoints are too large to bring back; their writing is timed
(cd "$OUT" && tar czf /tmp/s11.tgz . && rm -rf ./* && mv /tmp/s11.tgz .)

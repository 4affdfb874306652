#!/usr/bin/env bash
# Tenth session's issue-13 run on a 1-GPU host (the only kind lent this session), in one device call:
#   bash benchmarks/sessions/s10_gpu.sh
# 1. the ImageNet-like JPEG folder (100k train + 10k val, 1000 classes), timed;
# 2. the synthetic-data rate: `rmeeto retrain --data synthetic`, 2 epochs (epoch 2 is the steady rate);
# 3. the real-JPEG epoch on 1 GPU (benchmarks/minutes_gpu.sh gpu1, CPU pipeline, 15 workers), timed whole;
# 4. the 8-GPU projection from the 1-GPU rate (Ti / B scaled by session 8's step rates, $STEPS);
# 5. the input pipeline alone (rmeeto bench-data: CPU workers 1..15, the GPU path) in the time left (DATA_BENCH=0: not).
# Everything is under $OUT, packed into one archive at the end (the device returns few files).
set -uo pipefail
OUT=${OUT:-out/s10}; mkdir -p "$OUT/minutes"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-src}
T0=$(date +%s); left() { echo $(( ${BUDGET_S:-575} - ($(date +%s) - T0) )); }
quiet() { grep -v "Warning\|warn(\|return Variable\|_warn_once\|^$" ; }
M=(env OUT="$OUT/minutes" DATA=/tmp/imagenet_like WORKERS=${WORKERS:-15} PIPELINE=cpu)
nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tee "$OUT/gpu.txt"
echo "== 1. JPEG folder"
t=$(date +%s); IMAGES=100000 VAL_IMAGES=10000 "${M[@]}" timeout 240 bash benchmarks/minutes_gpu.sh make > "$OUT/make.log" 2>&1
echo "exit $?, $(( $(date +%s) - t )) s"; tail -2 "$OUT/make.log"
echo "== 2. synthetic data, 1 GPU, 2 epochs"
CKPT=/tmp/vim_small_patch16_224_random.pth
python3 -c "
import rmeeto, torch
from rmeeto.checkpoint import save_checkpoint
torch.manual_seed(0)
save_checkpoint(rmeeto.create_model('vim_small_patch16_224'), '$CKPT')"
timeout 130 python3 -m rmeeto retrain --model vim_small_patch16_224 --checkpoint $CKPT --data synthetic --preset paper \
  --epochs 2 -b 128 --amp bf16 -j 6 --no-progress --out "$OUT/synth1" > "$OUT/synth1.log" 2>&1
echo "exit $?"; grep -h "epoch" "$OUT/synth1.log" | quiet | tail -3
[ -f "${STEPS:-}" ] && cp "$STEPS" "$OUT/minutes/steps.json"
echo "== 3. real JPEGs, 1 GPU ($(left) s left)"
"${M[@]}" timeout $(( $(left) - 20 )) bash benchmarks/minutes_gpu.sh gpu1 2>&1 | quiet
echo "== 4. projection"
"${M[@]}" bash benchmarks/minutes_gpu.sh project 2>&1 | quiet
L=$(left); [ "${DATA_BENCH:-1}" = 1 ] && echo "== 5. input pipeline alone ($L s left)" && [ "$L" -gt 40 ] && \
  timeout $(( L - 10 )) python3 -m rmeeto bench-data /tmp/imagenet_like/train --workers 1,4,8,15 \
  --batch-size 128 --json "$OUT/data.json" 2>&1 | quiet | tee "$OUT/data.txt"
find "$OUT" -name "*.pth" -delete  # checkpoints are too large to bring back; their writing is timed
(cd "$OUT" && tar czf /tmp/s10.tgz . && rm -rf ./* && mv /tmp/s10.tgz .)

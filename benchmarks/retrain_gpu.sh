#!/usr/bin/env bash
# Issue 4 on the GPU machine: re-train Vim-S (paper preset, r=11) on synthetic 224px data, bf16, with the
# unmerged teacher, for 2 epochs (200 steps of 128 per GPU per epoch on one GPU); first on one GPU, then
# with torchrun on every GPU of the host (same per-GPU batch). Epoch 2's images/s excludes kernel compiles.
#   bash benchmarks/retrain_gpu.sh [NGPUS]      (writes under $OUT, default out/retrain)
set -uo pipefail
OUT=${OUT:-out/retrain}; mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-src} PYTHONUNBUFFERED=1
NGPUS=${1:-$(nvidia-smi -L | wc -l)}
CKPT=/tmp/vim_s_random.pth
python3 -c "
import rmeeto, torch
from rmeeto.checkpoint import save_checkpoint
torch.manual_seed(0)
save_checkpoint(rmeeto.create_model('vim_small_patch16_224'), '$CKPT')
print('random Vim-S checkpoint written (the speed does not depend on the weights)')"
ARGS=(--model vim_small_patch16_224 --checkpoint "$CKPT" --data synthetic --preset paper --epochs 2 -b 128
      --amp bf16 -j 6 --no-progress)
summary() {  # per-epoch images/s from log.jsonl
  python3 -c "
import json, sys
for line in open('$1/log.jsonl'):
    r = json.loads(line)
    print(f\"  epoch {r['epoch']}: {r['images_per_s']:.1f} img/s in all, {r['images_per_s'] / $2:.1f} per GPU, \"
          f\"loss {r['train_loss']:.3f}, {r['seconds']:.1f} s\")"
}
nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tee "$OUT/gpu.txt"
echo "== 1 GPU"
python3 -m rmeeto retrain "${ARGS[@]}" --out "$OUT/gpu1" 2>&1 | tail -n 6 | tee "$OUT/gpu1.log"
summary "$OUT/gpu1" 1 | tee -a "$OUT/summary.txt"
if [ "$NGPUS" -gt 1 ]; then
  echo "== $NGPUS GPUs (torchrun, DDP over NCCL)"
  torchrun --standalone --nproc_per_node "$NGPUS" -m rmeeto retrain "${ARGS[@]}" --out "$OUT/gpu$NGPUS" 2>&1 \
    | tail -n 6 | tee "$OUT/gpu$NGPUS.log"
  summary "$OUT/gpu$NGPUS" "$NGPUS" | tee -a "$OUT/summary.txt"
fi

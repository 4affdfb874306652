#!/usr/bin/env bash
# Tenth session, issue 14 baseline on one H200 (one device call, nothing else on the machine):
# inference eager / graphed of Vim-Ti/S/B, training steps of Ti/S/B (also the minutes projection's Ti / B
# scaling), then profiles: merged and unmerged Vim-S training step graphed, merged Vim-Ti eager inference with
# its merging layers' host time.
set -uo pipefail
OUT=${OUT:-out/s10base}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-src}
quiet() { grep -v "Warning\|warn(\|return Variable\|_warn_once\|^$" ; }
B3=(vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224)
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
echo "== inference"; timeout 150 python3 -m rmeeto bench "${B3[@]}" --modes eager,cudagraph --warmup 5 --repeats 20 \
  --json "$OUT/inference.json" 2>&1 | quiet
echo "== training steps"; timeout 170 python3 -m rmeeto bench "${B3[@]}" --train --no-inference --modes eager,cudagraph \
  --train-repeats 6 --json "$OUT/steps.json" 2>&1 | quiet
echo "== profile, Vim-S training step, graphed"; timeout 90 python3 benchmarks/profile_gpu.py --what train \
  --variants unmerged,merged --modes cudagraph --rows 14 2>&1 | quiet
echo "== profile, Vim-Ti inference, merged, eager"; timeout 80 python3 benchmarks/profile_gpu.py --model vim_tiny_patch16_224 \
  --what inference --variants unmerged,merged --modes eager --rows 12 --merge-layers 2>&1 | quiet

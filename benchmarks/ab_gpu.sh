#!/usr/bin/env bash
# A/B on one card in one run: `rmeeto bench` (Vim-Ti/S/B inference, fp16, batch 128, CUDA graphs, and the Vim-S
# training-step probe) for two source trees, interleaved (A, B per round; ROUNDS=2 for A, B, A, B) so drift hits both alike.
#   bash benchmarks/ab_gpu.sh A_SRC B_SRC      e.g. .old/src src   (writes JSON + logs under $OUT, default out/ab)
set -uo pipefail
A=${1:?A source tree}; B=${2:?B source tree}
OUT=${OUT:-out/ab}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tee "$OUT/gpu.txt"
for round in $(seq 1 "${ROUNDS:-1}"); do
  for side in A B; do
    src=$([ $side = A ] && echo "$A" || echo "$B")
    echo "== round $round, $side ($src): inference"
    PYTHONPATH=$src timeout 240 python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224 \
      --mode cudagraph --batch-size 128 --dtype fp16 --warmup 10 --repeats 50 --json "$OUT/inf_${side}${round}.json" 2>&1 | grep -v Warning
    echo "== round $round, $side: training step"
    PYTHONPATH=$src timeout 150 python3 -m rmeeto bench vim_small_patch16_224 --train --no-inference --mode cudagraph --batch-size 128 \
      --train-repeats 10 --json "$OUT/train_${side}${round}.json" 2>&1 | grep -v "Warning\|return Variable"
  done
done

#!/usr/bin/env bash
# Twenty-seventh session, call 3: why merged Vim-B is slower graphed than compiled + graphed (sessions 20-27: 1.36-1.38x
# against 1.40x, the unmerged model the same in both): the merged forward's kernels in both modes, then graphed Vim-B
# with the fused x_proj + dt_proj on / off (torch.compile runs the four GEMMs instead), alternating; the training step.
#   bash benchmarks/sessions/s27_gpu3.sh        (OUT=out/s27c by default; about 420 s)
set -uo pipefail
OUT=${OUT:-out/s27c} BUDGET_S=${BUDGET_S:-430} source benchmarks/_session.sh
export PYTHONPATH=$PWD/src
echo "== 1. merged Vim-B kernels, cudagraph and compile+cudagraph"
timeout 170 python3 benchmarks/profile_gpu.py --model vim_base_patch16_224 --what inference --variants merged \
  --modes cudagraph,compile+cudagraph --rows 30 2>&1 | quiet | tee "$OUT/profile_b.txt" | grep "^# " | cut -c1-230
for p in 1 0 1 0; do
  L=$(left); [ "$L" -lt 130 ] && break
  echo "== 2. Vim-B graphed, RMEETO_FUSED_PROJ=$p ($L s left)"
  RMEETO_FUSED_PROJ=$p timeout 45 python3 -m rmeeto bench vim_base_patch16_224 --preset paper --modes cudagraph \
    --rounds 2 2>&1 | quiet | tee -a "$OUT/bench_b_proj$p.txt" | grep -i "cudagraph\|error" | cut -c1-170
done
L=$(left); echo "== 3. training step, merged Vim-S student + teacher, bf16, graphed ($L s left)"
timeout $(( L - 5 )) python3 -m rmeeto bench vim_small_patch16_224 --train --no-inference --modes cudagraph \
  --train-repeats 4 2>&1 | quiet | tee "$OUT/train.txt" | grep -i "cudagraph\|error" | cut -c1-170
echo "done, $(left) s left"

#!/usr/bin/env bash
# Twenty-third session, call 2: why the compiled merged training step (s21_gpu1.sh: 867 images/s against eager
# 1,217 and unmerged compiled 1,098; 2,804 launches against eager's 2,206) and compiled merged Vim-Ti inference
# (8,067 against eager 16,530) are slow: kernel time vs wall, top kernels, dynamo's recompiles and graph breaks.
#   bash benchmarks/sessions/s23_gpu2.sh        (OUT=out/s23b by default; about 450 s)
set -uo pipefail
OUT=${OUT:-out/s23b} BUDGET_S=${BUDGET_S:-560} source benchmarks/_session.sh
echo "== 1. training step, Vim-S, eager and compile: profile, recompiles, graph breaks"
TORCH_LOGS=recompiles,graph_breaks timeout 330 python3 benchmarks/profile_gpu.py --what train --variants merged,unmerged \
  --modes eager,compile --rows 22 > "$OUT/train_profile.txt" 2>&1
grep -v "Warning\|warn(\|^  File\|^    " "$OUT/train_profile.txt" | grep -i "^#\|recompil\|graph break\|break\|ms \|kernel\|error\|Trace" | cut -c1-220 | head -90
L=$(left); echo "== 2. Vim-Ti merged inference, eager and compile ($L s left)"
[ "$L" -gt 40 ] && TORCH_LOGS=recompiles,graph_breaks timeout $(( L - 10 )) python3 benchmarks/profile_gpu.py \
  --model vim_tiny_patch16_224 --what inference --variants merged --modes eager,compile --rows 14 \
  > "$OUT/ti_profile.txt" 2>&1
grep -v "Warning\|warn(\|^  File\|^    " "$OUT/ti_profile.txt" | cut -c1-220 | head -60
echo "done, $(left) s left"

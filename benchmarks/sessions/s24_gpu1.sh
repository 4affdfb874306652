#!/usr/bin/env bash
# Twenty-fourth session, call 1: every GPU test on the tree whose ops are per-op torch.library fragments (29dac4d,
# never run on the device), then where the re-training step's host time goes (issue 14: merged Vim-S's eager
# and compiled training steps are host-bound, session 23), eager and compiled, merged and unmerged.
#   bash benchmarks/sessions/s24_gpu1.sh        (OUT=out/s24a by default; about 560 s)
set -uo pipefail
OUT=${OUT:-out/s24a} BUDGET_S=${BUDGET_S:-560} source benchmarks/_session.sh
echo "== 1. GPU tests"
OUT=$OUT/tests WORKERS=16 LIMIT_S=260 bash benchmarks/gpu_tests.sh tests 2>&1 | tail -25
L=$(left); echo "== 2. host profile, eager training step, Vim-S batch 128 ($L s left)"
timeout 90 python3 benchmarks/host_profile_train_gpu.py --mode eager --rows 45 > "$OUT/hp_train_eager.txt" 2>&1
grep "^#" "$OUT/hp_train_eager.txt"
L=$(left); echo "== 3. host profile, compiled training step ($L s left)"
[ "$L" -gt 60 ] && timeout $(( L - 10 )) python3 benchmarks/host_profile_train_gpu.py --mode compile --rows 45 \
  > "$OUT/hp_train_compile.txt" 2>&1; grep "^#" "$OUT/hp_train_compile.txt"
echo "done, $(left) s left"

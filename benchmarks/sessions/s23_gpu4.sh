#!/usr/bin/env bash
# Twenty-third session, call 4: rmeeto's ops as plain torch.library.Library definitions (library_op) instead of
# torch.library.custom_op, whose Python wrapper (custom_ops.py backend_impl) was 47% of a compiled merged Vim-Ti
# forward's host time (call 3). Compiled GPU tests, then host ms of the compiled forward at batch 1 (call 3: merged
# Vim-Ti 9.52, eager 5.49), the training step eager vs compile, and inference eager / compile / compile+cudagraph.
#   bash benchmarks/sessions/s23_gpu4.sh        (OUT=out/s23d by default; about 560 s)
set -uo pipefail
OUT=${OUT:-out/s23d} BUDGET_S=${BUDGET_S:-570} source benchmarks/_session.sh
echo "== 1. compiled GPU tests"
timeout 130 python3 -m pytest -m gpu -p no:cacheprovider -q -rfE --tb=short tests/ops/test_gpu_launch.py \
  -k compiled 2>&1 | grep -v "Warning\|warn\|^  \|^$" | tail -8 | tee "$OUT/tests.txt"
echo "== 2. host ms per compiled forward at batch 1, Vim-Ti ($(left) s left)"
timeout 90 python3 benchmarks/host_profile_gpu.py --models vim_tiny_patch16_224 --variants merged,unmerged --rows 8 \
  --compile > "$OUT/hp_compile.txt" 2>&1; grep "^#\|backend_impl\|ncalls" "$OUT/hp_compile.txt" | cut -c1-170
L=$(left); echo "== 3. training step, Vim-S, eager and compile ($L s left)"
[ "$L" -gt 200 ] && timeout 200 python3 -m rmeeto bench vim_small_patch16_224 --train --no-inference \
  --modes eager,compile --train-repeats 4 --json "$OUT/train.json" 2>&1 | quiet | tee "$OUT/train.txt" \
  | grep -i "eager\|compile\|error" | cut -c1-200
L=$(left); echo "== 4. Vim-Ti, S, B: eager, compile, compile+cudagraph ($L s left)"
[ "$L" -gt 60 ] && timeout $(( L - 10 )) python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 \
  vim_base_patch16_224 --preset paper --modes eager,compile,compile+cudagraph --rounds 2 \
  --json "$OUT/bench.json" 2>&1 | quiet | tee "$OUT/bench.txt" | grep -i "eager\|compile\|error" | cut -c1-200
echo "done, $(left) s left"

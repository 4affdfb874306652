#!/usr/bin/env bash
# Twenty-fourth session, call 3: every inference mode of Vim-Ti / S / B (paper presets) on the session's final tree,
# then the compiled training step alone in fresh processes (call 2 ran it after eager and cudagraph in one
# process: merged 0.77x of unmerged, where call 1's profile script, compile only, measured 1.29x on its host).
#   bash benchmarks/sessions/s24_gpu3.sh        (OUT=out/s24c by default; about 580 s)
set -uo pipefail
OUT=${OUT:-out/s24c} BUDGET_S=${BUDGET_S:-585} source benchmarks/_session.sh
echo "== 1. Vim-Ti, S, B: eager, compile, compile+cudagraph, cudagraph"
timeout 400 python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224 --preset paper \
  --modes eager,compile,compile+cudagraph,cudagraph --rounds 3 --json "$OUT/bench.json" 2>&1 | quiet \
  | tee "$OUT/bench.txt" | grep -i "eager\|compile\|cudagraph\|error" | cut -c1-200
L=$(left); echo "== 2. training step, compile only, fresh process ($L s left)"
[ "$L" -gt 120 ] && timeout $(( L - 70 )) python3 -m rmeeto bench vim_small_patch16_224 --train --no-inference \
  --modes compile --train-repeats 4 --json "$OUT/train_compile.json" 2>&1 | quiet | tee "$OUT/train_compile.txt" \
  | grep -i "compile\|error" | cut -c1-200
L=$(left); echo "== 3. training step, eager only, fresh process ($L s left)"
[ "$L" -gt 40 ] && timeout $(( L - 5 )) python3 -m rmeeto bench vim_small_patch16_224 --train --no-inference \
  --modes eager --train-repeats 4 2>&1 | quiet | tee "$OUT/train_eager.txt" | grep -i "eager\|error" | cut -c1-200
echo "done, $(left) s left"

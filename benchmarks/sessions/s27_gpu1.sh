#!/usr/bin/env bash
# Twenty-seventh session, call 1: the matching's loop settings swept per merging layer (norm chunks per loop trip,
# dot steps per loop trip, the small tiles' unroll), Vim-Ti / S / B eager and graphed in alternating rounds now that
# the launch cache's hole is mended, then every GPU test on the tree (cut by the time left).
#   bash benchmarks/sessions/s27_gpu1.sh        (OUT=out/s27a by default; about 590 s)
set -uo pipefail
OUT=${OUT:-out/s27a} BUDGET_S=${BUDGET_S:-585} source benchmarks/_session.sh
export PYTHONPATH=$PWD/src
sweep() {  # name, --ab argument, models
  L=$(left); echo "== sweep $1 ($L s left)"
  (cd benchmarks && timeout 75 python3 match_schedule_gpu.py --models "$3" --reps 9 --ab "$2") 2>&1 | quiet \
    | tee "$OUT/sweep_$1.txt" | grep -v "^  [ 0-9]" | cut -c1-250
}
sweep large_unroll "large=(128, 128, 32, 8, 2, 64);(128, 128, 32, 8, 3, 64);(128, 128, 32, 8, 6, 64)" \
  vim_tiny_patch16_224,vim_small_patch16_224
sweep dot_unroll "dot_unroll=None;2;3;6" vim_tiny_patch16_224,vim_small_patch16_224
sweep small_unroll "small=(64, 64, 32, 8, 4, 64);(64, 64, 32, 8, 6, 64);(64, 64, 32, 8, 12, 64)" vim_small_patch16_224
L=$(left); echo "== Vim-Ti, S, B eager and graphed, 3 rounds ($L s left)"
timeout 170 python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224 --preset paper \
  --modes eager,cudagraph --rounds 3 2>&1 | quiet | tee "$OUT/bench.txt" | grep -i "eager\|cudagraph\|error" | cut -c1-170
L=$(left); echo "== every GPU test ($L s left)"
OUT=$OUT/tests WORKERS=16 LIMIT_S=$(( L - 15 )) bash benchmarks/gpu_tests.sh tests
echo "done, $(left) s left"

#!/usr/bin/env bash
# Twenty-seventh session, call 2: the one-launch matching with 16 warps (call 1: the loop settings changed nothing;
# the 128 x 128 tiles cost 18.5 us at Vim-S widths where the 64 x 64 ones cost 11.5: the program is issue-bound,
# not waiting on loads), per merging layer and in whole graphed Vim-Ti / S (alternating processes); the GPU tests
# whose fixture changed (proj, out_proj); Vim-B graphed again (call 1's merged spread was 7%).
#   bash benchmarks/sessions/s27_gpu2.sh        (OUT=out/s27b by default; about 520 s)
set -uo pipefail
OUT=${OUT:-out/s27b} BUDGET_S=${BUDGET_S:-540} source benchmarks/_session.sh
export PYTHONPATH=$PWD/src
W8="(128, 128, 32, 8, 2, 64)" W16="(128, 128, 32, 16, 2, 64)"
sweep() {  # name, models, args...
  local name=$1 models=$2; shift 2
  L=$(left); echo "== sweep $name ($L s left)"
  (cd benchmarks && timeout 80 python3 match_schedule_gpu.py --models "$models" --reps 9 "$@") 2>&1 | quiet \
    | tee "$OUT/sweep_$name.txt" | grep -v "^  [ 0-9]" | cut -c1-250
}
sweep large_warps vim_tiny_patch16_224,vim_small_patch16_224 \
  --ab "large=$W8;$W16;(128, 128, 32, 16, 6, 64);(128, 128, 64, 16, 2, 64)"
sweep small_warps vim_small_patch16_224 --ab "small=(64, 64, 32, 8, 4, 64);(64, 64, 32, 16, 4, 64)"
sweep one_tile_16 vim_tiny_patch16_224,vim_small_patch16_224 --set "large=$W16" --ab "one_tile_min_r=33;0"
for v in 8 16 8 16; do
  L=$(left); echo "== Vim-Ti, S graphed, large tiles with $v warps ($L s left)"
  T=$([ $v = 8 ] && echo "$W8" || echo "$W16")
  timeout 50 python3 -c "
import sys
from rmeeto.ops.triton import merge as mt
mt.MATCH_CONFIG['large'] = $T
sys.argv = ['rmeeto', 'bench', 'vim_tiny_patch16_224', 'vim_small_patch16_224', '--preset', 'paper', '--modes', 'cudagraph',
            '--rounds', '2']
from rmeeto.cli import entry
entry()" 2>&1 | quiet | tee -a "$OUT/bench_w$v.txt" | grep -i "cudagraph\|error" | cut -c1-170
done
L=$(left); echo "== GPU tests: proj, out_proj ($L s left)"
OUT=$OUT/tests WORKERS=16 LIMIT_S=110 bash benchmarks/gpu_tests.sh tests/ops/test_gpu_proj.py tests/ops/test_gpu_outproj.py
L=$(left); echo "== Vim-B graphed, 3 rounds ($L s left)"
timeout $(( L - 5 )) python3 -m rmeeto bench vim_base_patch16_224 --preset paper --modes cudagraph --rounds 3 2>&1 \
  | quiet | tee "$OUT/bench_b.txt" | grep -i "cudagraph\|error" | cut -c1-170
echo "done, $(left) s left"

#!/usr/bin/env bash
# Twenty-seventh session, call 4 (the last 318 s of device time): the experimental one-pass matching
# (MATCH_CONFIG["scaled"]: the raw rows' dot scaled by the inverse norms afterwards, off by default) per merging layer,
# then whole graphed Vim-Ti / S with it off and on.
#   bash benchmarks/sessions/s27_gpu4.sh        (OUT=out/s27d by default; about 150 s)
# Ran on 36ede7c; the experiment was reverted after it (no gain), so on later trees MATCH_CONFIG has no "scaled".
set -uo pipefail
OUT=${OUT:-out/s27d} BUDGET_S=${BUDGET_S:-170} source benchmarks/_session.sh
export PYTHONPATH=$PWD/src
echo "== 1. matching per merging layer, scaled off / on"
(cd benchmarks && timeout 70 python3 match_schedule_gpu.py --reps 9 --ab "scaled=False;True") 2>&1 | quiet \
  | tee "$OUT/sweep_scaled.txt" | cut -c1-200
for v in False True; do
  L=$(left); [ "$L" -lt 30 ] && break
  echo "== 2. Vim-Ti, S graphed, scaled=$v ($L s left)"
  timeout $(( L - 5 < 45 ? L - 5 : 45 )) python3 -c "
import sys
from rmeeto.ops.triton import merge as mt
mt.MATCH_CONFIG['scaled'] = $v
sys.argv = ['rmeeto', 'bench', 'vim_tiny_patch16_224', 'vim_small_patch16_224', '--preset', 'paper', '--modes', 'cudagraph',
            '--rounds', '2']
from rmeeto.cli import entry
entry()" 2>&1 | quiet | tee -a "$OUT/bench_scaled_$v.txt" | grep -i "cudagraph\|error" | cut -c1-170
done
echo "done, $(left) s left"

#!/usr/bin/env bash
# Twenty-eighth session, call 2: the one-launch matching's best partners by one packed reduction ("pack") off / on per
# merging layer (with the compact plan, call 1's gain, now the default); whole graphed Vim-Ti / S / B with the
# matching as before this session (compact_max_r=None, pack=False) and as now, in alternating processes; then every
# GPU test on the new defaults.
#   bash benchmarks/sessions/s28_gpu2.sh        (OUT=out/s28b by default; about 560 s)
# Ran on 046bb26; "pack" was removed after it (no gain), so later trees lack it.
set -uo pipefail
OUT=${OUT:-out/s28b} BUDGET_S=${BUDGET_S:-570} source benchmarks/_session.sh
export PYTHONPATH=$PWD/src
echo "== sweep pack ($(left) s left)"
(cd benchmarks && timeout 60 python3 match_schedule_gpu.py --models vim_tiny_patch16_224,vim_small_patch16_224 \
  --reps 9 --ab "pack=False;True") 2>&1 | quiet | tee "$OUT/sweep_pack.txt" | grep -v "^  [ 0-9]" | cut -c1-250
OLD="--set compact_max_r=None --set pack=False"
for v in old new old new; do
  L=$(left); [ "$L" -lt 380 ] && break
  echo "== Vim-Ti, S graphed, matching $v ($L s left)"
  timeout 45 python3 benchmarks/bench_set.py $([ $v = old ] && echo $OLD) -- bench \
    vim_tiny_patch16_224 vim_small_patch16_224 --preset paper --modes cudagraph --rounds 2 2>&1 | quiet \
    | tee -a "$OUT/bench_$v.txt" | grep -i "cudagraph\|error\|MATCH" | cut -c1-170
done
L=$(left); echo "== every GPU test ($L s left)"
OUT=$OUT/tests WORKERS=16 LIMIT_S=$(( L - 15 )) bash benchmarks/gpu_tests.sh tests
echo "done, $(left) s left"

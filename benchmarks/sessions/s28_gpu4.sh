#!/usr/bin/env bash
# Twenty-eighth session, call 4 (the last ~350 s of device time): the matching and the merge + add + norm in one program
# per image (MATCH_CONFIG["fuse_norm"], rows per trip; off by default): its bits against the two launches (GPU test),
# per merging layer, then whole graphed Vim-Ti / S off / on.
#   bash benchmarks/sessions/s28_gpu4.sh        (OUT=out/s28d by default; about 230 s)
# Ran on 0203c9c; the one-program kernel was removed after it (much slower), so later trees have no "fuse_norm".
set -uo pipefail
OUT=${OUT:-out/s28d} BUDGET_S=${BUDGET_S:-230} source benchmarks/_session.sh
export PYTHONPATH=$PWD/src
echo "== GPU test: merge + norm bits, two launches and one program ($(left) s left)"
OUT=$OUT/tests WORKERS=16 LIMIT_S=75 bash benchmarks/gpu_tests.sh tests/ops/test_merge_fused.py \
  -k merge_add_norm_gives_the_bits
echo "== sweep fuse_norm ($(left) s left)"
(cd benchmarks && timeout 60 python3 match_schedule_gpu.py --models vim_tiny_patch16_224,vim_small_patch16_224 \
  --reps 7 --ab "fuse_norm=None;16") 2>&1 | quiet | tee "$OUT/sweep_fuse.txt" | cut -c1-250
for v in None 16; do
  L=$(left); [ "$L" -lt 25 ] && break
  echo "== Vim-Ti, S graphed, fuse_norm=$v ($L s left)"
  timeout $(( L - 3 < 40 ? L - 3 : 40 )) python3 benchmarks/bench_set.py --set fuse_norm=$v -- bench \
    vim_tiny_patch16_224 vim_small_patch16_224 --preset paper --modes cudagraph --rounds 2 2>&1 | quiet \
    | tee -a "$OUT/bench_$v.txt" | grep -i "cudagraph\|error\|MATCH" | cut -c1-170
done
echo "done, $(left) s left"

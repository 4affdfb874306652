#!/usr/bin/env bash
# Twenty-ninth session, call 1: the matching writing only the merge + norm's lists (norm_lists_only) off / on, per
# merging layer and in whole graphed Vim-Ti / S (alternating processes); Nsight Compute on the merge + norm kernel
# against the plain add + norm at Vim-Ti / S widths and on the matching (per-SASS stall samples); merged and unmerged
# Vim-Ti graphed per kernel; then the GPU tests of the plans and the merge + norm as time allows.
#   bash benchmarks/sessions/s29_gpu1.sh        (OUT=out/s29a by default; about 560 s)
set -uo pipefail
OUT=${OUT:-out/s29a} BUDGET_S=${BUDGET_S:-560} source benchmarks/_session.sh
export PYTHONPATH=$PWD/src
echo "== sweep norm_lists_only ($(left) s left)"
(cd benchmarks && timeout 90 python3 match_schedule_gpu.py --models vim_tiny_patch16_224,vim_small_patch16_224 \
  --reps 9 --ab "norm_lists_only=False;True") 2>&1 | quiet | tee "$OUT/sweep_norm_only.txt" | grep -v "^  [ 0-9]" \
  | cut -c1-250
for v in False True False True; do
  L=$(left); [ "$L" -lt 330 ] && break
  echo "== Vim-Ti, S graphed, norm_lists_only=$v ($L s left)"
  timeout 60 python3 benchmarks/bench_set.py --set norm_lists_only=$v -- bench \
    vim_tiny_patch16_224 vim_small_patch16_224 --preset paper --modes cudagraph --rounds 2 2>&1 | quiet \
    | tee -a "$OUT/bench_$v.txt" | grep -i "cudagraph\|error" | cut -c1-170
done
SEC="--section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats"
SEC="$SEC --section WarpStateStats --section SchedulerStats"
for cr in "192 5" "384 11"; do
  set -- $cr; L=$(left); [ "$L" -lt 200 ] && break
  echo "== ncu: add + norm at 197 / $((197 - $2)) rows and merge + norm, C=$1 ($L s left)"
  timeout 60 ncu --clock-control none --kernel-name regex:"_add_norm_fwd|_merge_norm_kernel" --launch-skip 3 \
    --launch-count 3 $SEC python3 benchmarks/merge_norm_once.py --channels $1 -r $2 > "$OUT/ncu_norm_$1.txt" 2>&1
  grep -E "^  _|Duration|Memory Throughput|DRAM Throughput|Achieved Occupancy|Registers Per|Warp Cycles Per Issued|Block Size|Grid Size" \
    "$OUT/ncu_norm_$1.txt" | cut -c1-150 | head -40
done
NCU="ncu --clock-control none --kernel-name regex:_match_kernel --launch-skip 3 --launch-count 1"
L=$(left); echo "== ncu: matching, Vim-Ti first layer, norm lists only ($L s left)"
[ "$L" -gt 170 ] && timeout 60 $NCU --section SourceCounters --section WarpStateStats --section SpeedOfLight \
  --page source --print-source sass --csv python3 benchmarks/match_once.py --channels 192 -r 5 --norm-only \
  --set norm_lists_only=True > "$OUT/ncu_match_sass.csv" 2>&1 && gzip -f "$OUT/ncu_match_sass.csv"
ls -la "$OUT" | grep ncu_match
L=$(left); echo "== profile: Vim-Ti graphed per kernel ($L s left)"
[ "$L" -gt 150 ] && timeout 90 python3 benchmarks/profile_gpu.py --model vim_tiny_patch16_224 --what inference \
  --modes cudagraph --rows 40 2>&1 | quiet > "$OUT/profile_ti.txt"
tail -5 "$OUT/profile_ti.txt" | cut -c1-200
L=$(left); echo "== GPU tests: plans, merge + norm ($L s left)"
OUT=$OUT/tests WORKERS=16 LIMIT_S=$(( L - 10 )) bash benchmarks/gpu_tests.sh tests/ops/test_gpu_plan.py \
  tests/ops/test_merge_fused.py
echo "done, $(left) s left"

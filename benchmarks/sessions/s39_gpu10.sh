#!/usr/bin/env bash
# Thirty-ninth session, call 10: (1) the plan test that failed in call 9 (direct launches counted), after the fix;
# (2) the one-launch out_proj + matching prototype at every compact-plan length of Vim-Ti; (3) whole graphed Vim-Ti
# with the one launch from 172 tokens (merge.OUTPROJ_MATCH_MIN_L=172) and off, alternating.
set -uo pipefail
OUT=${OUT:-out/s39j} BUDGET_S=${BUDGET_S:-170} source benchmarks/_session.sh
timeout 40 python3 -m pytest -x -q tests/ops/test_gpu_plan.py -k "general_paths_bits and tiny and merged and not unmerged" \
  2>&1 | tail -1
(cd benchmarks && timeout 50 python3 outproj_match_gpu.py --reps 10 --tiles "128,32,8,4") 2>&1 | quiet \
  | sed "s/, out equal; lists equal to the matching on it; the two-launch lists equal//"
for v in 172 999 172 999; do
  L=$(left); [ "$L" -lt 25 ] && break
  RMEETO_X=1 timeout 30 python3 benchmarks/bench_set.py --set merge.OUTPROJ_MATCH_MIN_L=$v -- bench vim_tiny_patch16_224 \
    --preset paper --modes cudagraph --rounds 2 2>&1 | quiet | grep -i "cudagraph\|error" | cut -c40-150 | sed "s/^/$v /"
done
echo "done, $(left) s left"

#!/usr/bin/env bash
# Twenty-eighth session, call 1: three new settings of the one-launch matching, each off / on per merging layer
# (Vim-Ti, S): the partner's dot rows loaded a step ahead ("prefetch"), the plan in registers over the merged
# sources only ("compact_max_r"), the row norms summed over a 2-D accumulator ("norm_2d"); then whole graphed Vim-Ti / S
# with all three off / on in alternating processes; the GPU tests of the projections (their fixture changed in
# session 27) and of the matching (new variants).
#   bash benchmarks/sessions/s28_gpu1.sh        (OUT=out/s28a by default; about 520 s)
# Ran on 6db36ff; "prefetch" and "norm_2d" were removed after it (no gain), so later trees lack them.
set -uo pipefail
OUT=${OUT:-out/s28a} BUDGET_S=${BUDGET_S:-560} source benchmarks/_session.sh
export PYTHONPATH=$PWD/src
echo "== GPU tests: proj, out_proj, fused merge ($(left) s left)"
OUT=$OUT/tests WORKERS=16 LIMIT_S=150 bash benchmarks/gpu_tests.sh tests/ops/test_gpu_proj.py tests/ops/test_gpu_outproj.py \
  tests/ops/test_merge_fused.py
sweep() {  # name, args...
  local name=$1; shift
  echo "== sweep $name ($(left) s left)"
  (cd benchmarks && timeout 75 python3 match_schedule_gpu.py --models vim_tiny_patch16_224,vim_small_patch16_224 \
    --reps 9 "$@") 2>&1 | quiet | tee "$OUT/sweep_$name.txt" | grep -v "^  [ 0-9]" | cut -c1-250
}
sweep prefetch --ab "prefetch=False;True"
sweep compact --ab "compact_max_r=None;32"
sweep norm2d --ab "norm_2d=False;True"
NEW="--set prefetch=True --set compact_max_r=32 --set norm_2d=True"
for v in off on off on; do
  L=$(left); [ "$L" -lt 40 ] && break
  echo "== Vim-Ti, S graphed, new settings $v ($L s left)"
  timeout $(( L - 5 < 50 ? L - 5 : 50 )) python3 benchmarks/bench_set.py $([ $v = on ] && echo $NEW) -- bench \
    vim_tiny_patch16_224 vim_small_patch16_224 --preset paper --modes cudagraph --rounds 2 2>&1 | quiet \
    | tee -a "$OUT/bench_$v.txt" | grep -i "cudagraph\|error\|MATCH" | cut -c1-170
done
echo "done, $(left) s left"

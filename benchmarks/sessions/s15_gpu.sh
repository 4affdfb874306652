#!/usr/bin/env bash
# Fifteenth session's first device call (one GPU): the partner step's norms in one loop, the merge + norm
# kernel's first list element read beside the kept token, the token embedding in two kernels.
#   OLD=<dir holding the session's starting tree's src/> bash benchmarks/sessions/s15_gpu.sh
# 1. GPU tests of what changed (embed, merge, whole model);
# 2. bench_merge_gpu.py --match-tiles: graphed match time per tiling, norms in one loop or two, dot unrolled;
# 3. `rmeeto bench` Vim-Ti/S/B eager and graphed, this tree, then graphed with the old tree;
# 4. the Vim-S graphed profile (every kernel), this tree and the old one.
set -uo pipefail
OUT=${OUT:-out/s15}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s); left() { echo $(( ${BUDGET_S:-560} - ($(date +%s) - T0) )); }
quiet() { grep -v "Warning\|warn(\|return Variable\|_warn_once\|^$" ; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | head -1 | tee "$OUT/gpu.txt"
MODELS=${MODELS:-vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224}
echo "== 1. GPU tests"
PYTHONPATH=src OUT="$OUT/tests" WORKERS=16 LIMIT_S=170 bash benchmarks/gpu_tests.sh ${TESTS:-tests/ops/test_gpu_embed.py \
  tests/ops/test_merge_fused.py tests/ops/test_merge_host.py tests/test_merge.py tests/models/test_gpu_model.py} 2>&1 | tail -8
echo "== 2. match tiles ($(left) s left)"
PYTHONPATH=src timeout 150 python3 benchmarks/bench_merge_gpu.py --match-tiles --only-sweeps --reps 20 2>&1 | quiet \
  > "$OUT/match_tiles.txt"; grep "fastest\|DIFFERS" "$OUT/match_tiles.txt"
echo "== 3. bench ($(left) s left)"
PYTHONPATH=src timeout 150 python3 -m rmeeto bench $MODELS --preset paper --modes eager,cudagraph \
  --json "$OUT/bench_new.json" 2>&1 | quiet | tee "$OUT/bench_new.txt"
if [ -n "${OLD:-}" ]; then
  echo "== 3b. bench old ($(left) s left)"
  PYTHONPATH=$OLD/src timeout 100 python3 -m rmeeto bench $MODELS --preset paper --modes cudagraph \
    --json "$OUT/bench_old.json" 2>&1 | quiet | tee "$OUT/bench_old.txt"
fi
for tree in src ${OLD:+$OLD/src}; do
  L=$(left); echo "== 4. profile $tree ($L s left)"; [ "$L" -gt 40 ] || break
  PYTHONPATH=$tree timeout $(( L - 5 )) python3 benchmarks/profile_gpu.py --what inference \
    --variants unmerged,merged --modes cudagraph --rows 40 2>&1 | quiet > "$OUT/profile_s_${tree//\//_}.txt"
  grep "^#" "$OUT/profile_s_${tree//\//_}.txt"
done

#!/usr/bin/env bash
# Twenty-sixth session, call 2: the matching's plan in registers timed off / on per merging
# layer and in whole graphed Vim-Ti / S (alternating processes), the GPU tests of everything that merges; and why
# the prepared path's bits differed from the general path's under RMEETO_PDL=1 in call 1 (pdl_diag_gpu.py).
# (Call 2 ran it with the switch as it was then, MATCH_CONFIG["one_tile"] True / False; here its successor,
# MATCH_CONFIG["one_tile_min_r"] None / 0: never / wherever every source fits one tile.)
#   bash benchmarks/sessions/s26_gpu2.sh        (OUT=out/s26b by default; about 570 s)
set -uo pipefail
OUT=${OUT:-out/s26b} BUDGET_S=${BUDGET_S:-575} source benchmarks/_session.sh
export PYTHONPATH=$PWD/src
echo "== 1. matching per merging layer, one_tile off / on"
(cd benchmarks && timeout 120 python3 match_schedule_gpu.py --ab one_tile_min_r=None,0 --reps 9) 2>&1 | quiet | tee "$OUT/match_ab.txt"
for v in 0 1 0 1; do
  L=$(left); echo "== 2. Vim-Ti, S graphed, one_tile=$v ($L s left)"
  timeout 50 python3 -c "
import sys
from rmeeto.ops.triton import merge as mt
mt.MATCH_CONFIG['one_tile_min_r'] = 0 if $v else None
sys.argv = ['rmeeto', 'bench', 'vim_tiny_patch16_224', 'vim_small_patch16_224', '--preset', 'paper', '--modes', 'cudagraph',
            '--rounds', '3']
from rmeeto.cli import entry
entry()" 2>&1 | quiet | tee -a "$OUT/bench_onetile$v.txt" | grep -i "cudagraph\|error" | cut -c1-170
done
echo "== 3. GPU tests of everything that merges ($(left) s left)"
OUT=$OUT/tests WORKERS=16 LIMIT_S=190 bash benchmarks/gpu_tests.sh tests/ops/test_gpu_plan.py tests/ops/test_gpu_launch.py \
  tests/models/test_gpu_model.py tests/ops/test_merge_fused.py tests/ops/test_merge_host.py tests/train/test_gpu_train.py \
  tests/train/test_train_pipeline.py tests/ops/test_gpu_pdl.py
echo "== 4. PDL diagnosis ($(left) s left)"
RMEETO_PDL=1 OUT=$OUT/tests_pdl WORKERS=4 LIMIT_S=70 bash benchmarks/gpu_tests.sh tests/ops/test_gpu_plan.py -k general_paths_bits
grep -A30 "^___" "$OUT/tests_pdl/log.txt" | grep -v "^\s*$" | head -45 | cut -c1-200
for s in "0 0" "1 0" "1 1"; do
  set -- $s
  L=$(left); [ "$L" -lt 25 ] && break
  RMEETO_PDL=$1 CUDA_LAUNCH_BLOCKING=$2 timeout $(( L - 15 < 50 ? L - 15 : 50 )) python3 benchmarks/pdl_diag_gpu.py \
    --save "$OUT/pdl$1_block$2.pt" 2>&1 | quiet | tee -a "$OUT/pdl_diag.txt" | cut -c1-230
done
ls "$OUT"/*.pt >/dev/null 2>&1 && python3 benchmarks/pdl_diag_gpu.py --compare "$OUT"/pdl*.pt 2>&1 | quiet \
  | tee -a "$OUT/pdl_diag.txt" | tail -30 | cut -c1-230
rm -f "$OUT"/*.pt
echo "done, $(left) s left"

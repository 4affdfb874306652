#!/usr/bin/env bash
# Thirty-second session, call 4: every GPU test on this tree (in_proj as TMA tiles: Vim-Ti's width at every
# length, Vim-S's up to 128 x 131 rows); then whole graphed Vim-S with that rule against cuBLAS at every layer
# (inproj.WIDE_MAX_ROWS = 0), alternating processes.
#   bash benchmarks/sessions/s32_gpu4.sh        (OUT=out/s32d by default; about 590 s)
set -uo pipefail
OUT=${OUT:-out/s32d} BUDGET_S=${BUDGET_S:-590} source benchmarks/_session.sh
echo "== every GPU test ($(left) s left)"
OUT=$OUT/tests WORKERS=16 LIMIT_S=380 bash benchmarks/gpu_tests.sh tests
bench_with() {  # $1: WIDE_MAX_ROWS for the run, then rmeeto's arguments
  python3 - "$@" <<'PY'
import sys
from rmeeto.ops.triton import inproj
inproj.WIDE_MAX_ROWS = int(sys.argv[1])
from rmeeto.cli import main
sys.exit(main(sys.argv[2:]))
PY
}
for v in 16768 0 16768 0 16768 0; do
  L=$(left); [ "$L" -lt 40 ] && break
  echo "== Vim-S graphed, WIDE_MAX_ROWS=$v ($L s left)"
  timeout $(( L - 5 )) bash -c "$(declare -f bench_with); bench_with $v bench vim_small_patch16_224 --preset paper \
    --modes cudagraph --rounds 2" 2>&1 | quiet | tee -a "$OUT/bench_s_rows$v.txt" | grep -i "cudagraph\|error" \
    | cut -c1-170
done
echo "done, $(left) s left"

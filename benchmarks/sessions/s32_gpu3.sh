#!/usr/bin/env bash
# Thirty-second session, call 3: whole graphed Vim-S and Vim-B with in_proj as TMA tiles (their widths let in for
# the run: inproj.MAX_K raised) against cuBLAS (RMEETO_FUSED_INPROJ=0), alternating processes: call 2 found
# Vim-Ti's whole forward 1.2% faster with the tiles, far more than the kernels' own times foretold.
#   bash benchmarks/sessions/s32_gpu3.sh        (OUT=out/s32c by default; about 560 s)
set -uo pipefail
OUT=${OUT:-out/s32c} BUDGET_S=${BUDGET_S:-560} source benchmarks/_session.sh
bench_with() {  # $1: MAX_K for the run, then rmeeto's arguments
  python3 - "$@" <<'PY'
import sys
from rmeeto.ops.triton import inproj
inproj.MAX_K = int(sys.argv[1])
from rmeeto.cli import main
sys.exit(main(sys.argv[2:]))
PY
}
for m in vim_small_patch16_224 vim_base_patch16_224; do
  for v in on off on off; do
    L=$(left); [ "$L" -lt 70 ] && break
    echo "== $m graphed, in_proj tiles $v ($L s left)"
    RMEETO_FUSED_INPROJ=$([ $v = on ] && echo 1 || echo 0) timeout $(( L - 5 )) bash -c "$(declare -f bench_with); \
      bench_with 4096 bench $m --preset paper --modes cudagraph --rounds 2" 2>&1 | quiet \
      | tee -a "$OUT/bench_${m%%_patch*}_$v.txt" | grep -i "cudagraph\|error" | cut -c1-170
  done
done
echo "done, $(left) s left"

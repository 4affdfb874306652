#!/usr/bin/env bash
# Thirty-second session, call 1: in_proj by backend at every token count of Vim-Ti's and Vim-S's paper schedules:
# cuBLAS against persistent Triton tiles over TMA descriptors made on the host (tma) or on the device (tmadev),
# graphed and eager (host work included), before building either into the mixers.
#   bash benchmarks/sessions/s32_gpu1.sh        (OUT=out/s32a by default; about 420 s)
set -uo pipefail
OUT=${OUT:-out/s32a} BUDGET_S=${BUDGET_S:-450} source benchmarks/_session.sh
for m in Ti S; do
  L=$(left); [ "$L" -lt 60 ] && break
  echo "== Vim-$m in_proj by backend ($L s left)"
  (cd benchmarks && timeout $(( L > 230 ? 220 : L - 10 )) python3 gemm_ab_gpu.py --models $m --ops in \
    --backends cublas,tma,tmadev --eager) 2>&1 | quiet | tee "$OUT/gemm_in_$m.txt" | grep -v "^   " | cut -c1-330
done
echo "done, $(left) s left"

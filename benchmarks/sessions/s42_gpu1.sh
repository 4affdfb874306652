#!/usr/bin/env bash
# Forty-second session, call 1: issue 14's graphed ratios with the matching (nomatch) or the whole merging step
# (nomerge) taken out of merged Vim-Ti / Vim-S (benchmarks/match_oracle_gpu.py), alternating processes; then
# VideoMamba-Ti's re-training step with rmeeto.ops.proj.ALIGN_BC_TRAIN off / on.
#   bash benchmarks/sessions/s42_gpu1.sh        (OUT=out/s42a by default; about 585 s)
set -uo pipefail
OUT=${OUT:-out/s42a} BUDGET_S=${BUDGET_S:-585} source benchmarks/_session.sh
oracle() {  # oracle model log [more flags]
  local o=$1 m=$2 log=$3; shift 3
  (cd benchmarks && timeout 200 python3 match_oracle_gpu.py --oracle "$o" "$@" -- bench "$m" --preset paper \
    --modes cudagraph --rounds 3 --repeats 60 2>&1 | quiet | tee -a "$OUT/$log" | grep -i "cudagraph\|oracle\|check\|error" \
    | cut -c1-200)
}
L=$(left); echo "== Vim-Ti none, with the replay check ($L s left)"
oracle none vim_tiny_patch16_224 ti_none.txt --check vim_tiny_patch16_224
for pass in 1 2; do
  for o in nomatch nomerge none; do
    [ "$pass" = 1 ] && [ "$o" = none ] && continue
    L=$(left); echo "== Vim-Ti $o, pass $pass ($L s left)"; [ "$L" -lt 200 ] && break 2
    oracle "$o" vim_tiny_patch16_224 "ti_$o.txt"
  done
done
for o in none nomatch nomerge; do
  L=$(left); echo "== Vim-S $o ($L s left)"; [ "$L" -lt 170 ] && break
  oracle "$o" vim_small_patch16_224 "s_$o.txt"
done
for v in False True; do
  L=$(left); echo "== VideoMamba-Ti train, ALIGN_BC_TRAIN=$v ($L s left)"; [ "$L" -lt 60 ] && break
  (cd benchmarks && timeout $(( L - 10 )) python3 bench_set.py --set rmeeto.ops.proj.ALIGN_BC_TRAIN=$v -- bench \
    videomamba_tiny_patch16_224_f8 --batch-size 32 --train --no-inference --modes cudagraph --train-repeats 10 2>&1 \
    | quiet | tee -a "$OUT/vtrain_$v.txt" | grep -i "cudagraph\|error" | cut -c1-200)
done
echo "done, $(left) s left"
tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz --warning=no-file-changed . ; find "$OUT" -type f ! -name all.tar.gz -delete

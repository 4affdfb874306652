#!/usr/bin/env bash
# Thirty-fourth session, call 4: Vim-B's width. The table's x_proj + dt_proj tiles at 186 / 164 / 142 tokens took
# 120-152 us in call 3 against 83-99 in session 17: the same tilings on the tree before this session
# (.ab/old/src: `git archive 51ecade src | tar -x -C .ab/old`) and on this one; then whole graphed Vim-B with the
# whole-wave rule at its width on (proj.PROJ_WAVE_WIDE_PER_SM=2) and off (None), alternating. Packed into one
# archive at the end.
#   bash benchmarks/sessions/s34_gpu4.sh        (OUT=out/s34d by default; about 400 s)
set -uo pipefail
OUT=${OUT:-out/s34d} BUDGET_S=${BUDGET_S:-400} source benchmarks/_session.sh
CFG="128,64,64,4,2;64,64,64,4,2;128,64,64,8,3;64,64,128,4,3"
for tree in .ab/old/src src; do
  echo "== proj tilings at Vim-B's width, $tree ($(left) s left)"
  (cd benchmarks && PYTHONPATH=$OLDPWD/$tree timeout 80 python3 bench_proj_gpu.py --dims 1536 --lengths 186,164,142 \
    --configs "$CFG" --reps 15) 2>&1 | quiet | tee "$OUT/proj_b_$(basename $(dirname $tree)).txt" | grep -v "^   best"
done
for v in 2 None 2 None; do
  L=$(left); [ "$L" -lt 60 ] && break
  echo "== Vim-B graphed, proj.PROJ_WAVE_WIDE_PER_SM=$v ($L s left)"
  timeout 80 python3 benchmarks/bench_set.py --set proj.PROJ_WAVE_WIDE_PER_SM=$v -- bench vim_base_patch16_224 \
    --preset paper --modes cudagraph --rounds 2 2>&1 | quiet | tee -a "$OUT/bench_b_wave_$v.txt" \
    | grep -i "cudagraph\|error" | cut -c1-170
done
echo "done, $(left) s left"
tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz --warning=no-file-changed . ; find "$OUT" -type f ! -name all.tar.gz -delete

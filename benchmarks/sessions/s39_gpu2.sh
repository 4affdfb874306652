#!/usr/bin/env bash
# Thirty-ninth session, call 2: (1) the persistent TMA GEMM's left-over tiles in row parts (tail_split_gpu.py: in_proj
# at Vim-Ti / S widths, Vim-B's sum + out_proj; split 1 / 2 / 4 / auto, graphed us per call); (2) x_proj + dt_proj
# tilings at Vim-Ti's width at 76 / 147 / 152 tokens; (3) sum + out_proj tilings at Vim-Ti's width at every count;
# (4) whole graphed Vim-Ti (then Vim-S) with the split off (TAIL_SPLITS={}) and on, alternating processes.
#   bash benchmarks/sessions/s39_gpu2.sh        (OUT=out/s39b by default; about 560 s)
set -uo pipefail
OUT=${OUT:-out/s39b} BUDGET_S=${BUDGET_S:-570} source benchmarks/_session.sh
echo "== 1. tail split ($(left) s left)"
(cd benchmarks && timeout 150 python3 tail_split_gpu.py --models Ti,S,B --reps 12) 2>&1 | quiet | tee "$OUT/tail_split.txt"
echo "== 2. proj tiles, Ti ($(left) s left)"
(cd benchmarks && timeout 80 python3 bench_proj_gpu.py --dims 384 --sweep --lengths 76,147,152 --reps 15) 2>&1 | quiet \
  > "$OUT/proj_ti.txt"; grep -i "default\|best\|L=" "$OUT/proj_ti.txt" | head -30 | cut -c1-200
echo "== 3. out_proj tiles, Ti ($(left) s left)"
(cd benchmarks && timeout 80 python3 bench_outproj_gpu.py --dims 384x192 --table --reps 12) 2>&1 | quiet \
  > "$OUT/outproj_ti.txt"; grep "table\|best\|merged" "$OUT/outproj_ti.txt" | cut -c1-250
i=0
for m in "ti {}" "ti None" "ti {}" "ti None" "s {}" "s None"; do
  set -- $m; i=$((i + 1)); L=$(left); [ "$L" -lt 60 ] && break
  name=$([ "$1" = ti ] && echo vim_tiny_patch16_224 || echo vim_small_patch16_224)
  val=$([ "$2" = None ] && echo "{2: 0.55, 4: 0.32}" || echo "{}")
  echo "== 4.$i $name graphed, TAIL_SPLITS=$val ($L s left)"
  timeout $(( L - 10 )) python3 benchmarks/bench_set.py --set "tma_gemm.TAIL_SPLITS=$val" -- bench $name \
    --preset paper --modes cudagraph --rounds 3 --json "$OUT/ab_${1}_$i.json" 2>&1 | quiet \
    | tee "$OUT/ab_${1}_$i.txt" | grep -i "cudagraph\|error\|ratio" | cut -c1-220
done
echo "done, $(left) s left"
tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz --warning=no-file-changed . ; find "$OUT" -type f ! -name all.tar.gz -delete

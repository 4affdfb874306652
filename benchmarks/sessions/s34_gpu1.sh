#!/usr/bin/env bash
# Thirty-fourth session, call 1: where merged Vim-Ti / S still spend time beyond their token share. The one-launch
# matching taken apart (match_parts_gpu.py), the idle gaps of graphed forwards by kernel (gaps_gpu.py), Nsight
# Compute's stall samples of the matching per source line (warm caches, as in the graph), then the embedding's GPU
# tests (51ecade ran on the CPU only). Everything under $OUT is packed into one archive at the end.
#   bash benchmarks/sessions/s34_gpu1.sh        (OUT=out/s34a by default; about 330 s)
set -uo pipefail
OUT=${OUT:-out/s34a} BUDGET_S=${BUDGET_S:-330} source benchmarks/_session.sh
echo "== matching in parts ($(left) s left)"
(cd benchmarks && timeout 100 python3 match_parts_gpu.py) 2>&1 | quiet | tee "$OUT/match_parts.txt"
echo "== gaps, graphed Vim-Ti / S ($(left) s left)"
timeout 120 python3 benchmarks/gaps_gpu.py --models vim_tiny_patch16_224,vim_small_patch16_224 --calls 6 \
  --json "$OUT/gaps.json" 2>&1 | quiet | tee "$OUT/gaps.txt" | cut -c1-200
NCU="ncu --clock-control none --cache-control none --kernel-name regex:_match_kernel --launch-skip 3 --launch-count 1"
for s in "197 98 5" "147 68 71"; do
  set -- $s; L=$(left); [ "$L" -lt 90 ] && break
  echo "== ncu: matching at $1 tokens, r=$3, Vim-Ti width ($L s left)"
  timeout 60 $NCU --section SourceCounters --section WarpStateStats --section SpeedOfLight --section LaunchStats \
    -o "$OUT/ncu_match_$1" python3 benchmarks/match_once.py --tokens $1 --cls $2 --channels 192 -r $3 --norm-only \
    > "$OUT/ncu_match_$1.log" 2>&1
  ncu -i "$OUT/ncu_match_$1.ncu-rep" --page source --print-source cuda --csv > "$OUT/ncu_match_$1_src.csv" 2>&1
  ncu -i "$OUT/ncu_match_$1.ncu-rep" --page details > "$OUT/ncu_match_$1_details.txt" 2>&1
  grep -E "Duration|Registers Per|Warp Cycles Per Issued|Issued Ipc|Stall" "$OUT/ncu_match_$1_details.txt" | head -12
  head -c 600 "$OUT/ncu_match_$1_src.csv"; echo
done
L=$(left); echo "== GPU tests of the embedding ($L s left)"
[ "$L" -gt 50 ] && OUT=$OUT/tests WORKERS=16 LIMIT_S=$(( L - 15 )) bash benchmarks/gpu_tests.sh tests/ops/test_gpu_embed.py \
  tests/test_fast.py
echo "done, $(left) s left"
tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz . && find "$OUT" -type f ! -name all.tar.gz -delete

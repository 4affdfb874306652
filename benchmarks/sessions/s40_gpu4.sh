#!/usr/bin/env bash
# Fortieth session, call 4: the scan forward with part of its exp2 on the FMA units (benchmarks/scan_exp_gpu.py),
# per call at Vim-Ti / S widths, then whole graphed Vim-Ti / S with each variant (alternating processes).
set -uo pipefail
OUT=${OUT:-out/s40d} BUDGET_S=${BUDGET_S:-570} source benchmarks/_session.sh
cd benchmarks
for v in mufu poly_odd poly_all mufu poly_odd poly_all; do
  L=$(left); echo "== $v ($L s left)"
  timeout $(( L - 15 )) python3 scan_exp_gpu.py --variant $v 2>&1 | quiet | tee -a "$OUT/scan_exp.txt"
done
for i in 1 2; do
  for v in mufu poly_all; do
    L=$(left); echo "== bench $v pass $i ($L s left)"; [ "$L" -lt 60 ] && break 2
    timeout $(( L - 15 )) python3 scan_exp_gpu.py --variant $v --dims "" -- bench vim_tiny_patch16_224 \
      vim_small_patch16_224 --preset paper --modes cudagraph --rounds 3 --repeats 60 2>&1 | quiet \
      | tee "$OUT/bench_${v}_$i.txt" | grep -i "cudagraph\|error" | cut -c1-200
  done
done
echo "done, $(left) s left"
cd .. && tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz --warning=no-file-changed . ; find "$OUT" -type f ! -name all.tar.gz -delete

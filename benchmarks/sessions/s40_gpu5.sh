#!/usr/bin/env bash
# Fortieth session, call 5: x_dbl rows with B / C 16-byte aligned (rmeeto.ops.triton.proj.ALIGN_BC): the scan per
# call in both layouts, whole Vim-Ti with the switch off / on in alternating processes, then the GPU tests of the
# projection, plans, launches, scan and whole models.
set -uo pipefail
OUT=${OUT:-out/s40e} BUDGET_S=${BUDGET_S:-580} source benchmarks/_session.sh
L=$(left); echo "== scan per call ($L s left)"
(cd benchmarks && python3 scan_align_gpu.py --dims 384 --lengths 197,147,76 2>&1 | quiet | tee "$OUT/scan_align.txt")
for i in 1 2; do
  for v in False True; do
    L=$(left); echo "== ALIGN_BC=$v pass $i ($L s left)"; [ "$L" -lt 330 ] && break 2
    (cd benchmarks && timeout $(( L - 15 )) python3 bench_set.py --set proj.ALIGN_BC=$v -- bench \
      vim_tiny_patch16_224 --preset paper --modes cudagraph,eager --rounds 3 --repeats 60 2>&1 | quiet \
      | tee "$OUT/ab_${v}_$i.txt" | grep -i "cudagraph\|eager\|error" | cut -c1-200)
  done
done
L=$(left); echo "== GPU tests ($L s left)"
OUT=$OUT/tests WORKERS=16 LIMIT_S=$(( L - 20 )) bash benchmarks/gpu_tests.sh tests/ops/test_gpu_proj.py \
  tests/ops/test_gpu_plan.py tests/ops/test_gpu_launch.py tests/models/test_gpu_model.py tests/ops/test_gpu_scan.py \
  tests/ops/test_gpu_bidir.py 2>&1 | tail -25
echo "done, $(left) s left"
tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz --warning=no-file-changed . ; find "$OUT" -type f ! -name all.tar.gz -delete

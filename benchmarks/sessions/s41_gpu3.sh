#!/usr/bin/env bash
# Forty-first session, call 3: after call 2's compile failures (split_x_dbl read the storage offset, which
# torch.compile cannot trace; now the strides): Vim-Ti's re-training step with rmeeto.ops.proj.ALIGN_BC_TRAIN off /
# on in alternating processes, then every GPU test, the compile tests first.
#   bash benchmarks/sessions/s41_gpu3.sh        (OUT=out/s41c by default; about 585 s)
set -uo pipefail
OUT=${OUT:-out/s41c} BUDGET_S=${BUDGET_S:-585} source benchmarks/_session.sh
for v in False True False True; do
  L=$(left); echo "== Vim-Ti train, ALIGN_BC_TRAIN=$v ($L s left)"; [ "$L" -lt 470 ] && break
  (cd benchmarks && timeout 90 python3 bench_set.py --set rmeeto.ops.proj.ALIGN_BC_TRAIN=$v -- bench \
    vim_tiny_patch16_224 --train --no-inference --modes cudagraph,eager --train-repeats 10 2>&1 | quiet \
    | tee -a "$OUT/train_$v.txt" | grep -i "cudagraph\|eager\|error" | cut -c1-200)
done
L=$(left); echo "== GPU tests ($L s left)"
OUT=$OUT/tests WORKERS=16 LIMIT_S=$(( L - 20 )) bash benchmarks/gpu_tests.sh tests/ops/test_gpu_launch.py \
  tests/train tests/ops/test_custom_ops.py tests/models tests 2>&1 | tail -25
echo "done, $(left) s left"
tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz --warning=no-file-changed . ; find "$OUT" -type f ! -name all.tar.gz -delete

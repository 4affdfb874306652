#!/usr/bin/env bash
# Forty-first session, call 2: the training path's B / C rows copied out of x_proj's output where they are not 16-byte
# aligned (rmeeto.ops.proj.split_x_dbl, switch rmeeto.ops.proj.ALIGN_BC_TRAIN; call 1 timed a first version, zero
# rows inserted into x_proj's weight): Vim-Ti's re-training step with the switch off / on in alternating processes
# (the teacher's inference rows aligned in both), then every GPU test.
#   bash benchmarks/sessions/s41_gpu2.sh        (OUT=out/s41b by default; about 570 s)
set -uo pipefail
OUT=${OUT:-out/s41b} BUDGET_S=${BUDGET_S:-575} source benchmarks/_session.sh
for i in 1 2; do
  for v in False True; do
    L=$(left); echo "== Vim-Ti train, ALIGN_BC_TRAIN=$v pass $i ($L s left)"; [ "$L" -lt 450 ] && break 2
    (cd benchmarks && timeout 60 python3 bench_set.py --set rmeeto.ops.proj.ALIGN_BC_TRAIN=$v -- bench \
      vim_tiny_patch16_224 --train --no-inference --modes cudagraph,eager --train-repeats 10 2>&1 | quiet \
      | tee "$OUT/train_${v}_$i.txt" | grep -i "cudagraph\|eager\|error" | cut -c1-200)
  done
done
L=$(left); echo "== every GPU test ($L s left)"
OUT=$OUT/tests WORKERS=16 LIMIT_S=$(( L - 20 )) bash benchmarks/gpu_tests.sh tests 2>&1 | tail -25
echo "done, $(left) s left"
tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz --warning=no-file-changed . ; find "$OUT" -type f ! -name all.tar.gz -delete

#!/usr/bin/env bash
# Forty-first session, call 1: the training path's x_dbl rows with B / C 16-byte aligned
# (rmeeto.ops.triton.proj.ALIGN_BC_TRAIN, rmeeto.ops.proj.scan_inputs): Vim-Ti's re-training step with the switch
# off / on in alternating processes (the teacher's inference rows aligned in both), then VideoMamba-Ti's inference
# with the inference rows (proj.ALIGN_BC, session 40) off / on.
#   bash benchmarks/sessions/s41_gpu1.sh        (OUT=out/s41a by default; about 560 s)
set -uo pipefail
OUT=${OUT:-out/s41a} BUDGET_S=${BUDGET_S:-575} source benchmarks/_session.sh
for i in 1 2; do
  for v in False True; do
    L=$(left); echo "== Vim-Ti train, ALIGN_BC_TRAIN=$v pass $i ($L s left)"; [ "$L" -lt 250 ] && break 2
    (cd benchmarks && timeout $(( L - 15 )) python3 bench_set.py --set proj.ALIGN_BC_TRAIN=$v -- bench \
      vim_tiny_patch16_224 --train --no-inference --modes cudagraph,eager --train-repeats 10 2>&1 | quiet \
      | tee "$OUT/train_${v}_$i.txt" | grep -i "cudagraph\|eager\|error" | cut -c1-200)
  done
done
for v in False True; do
  L=$(left); echo "== VideoMamba-Ti f8, ALIGN_BC=$v ($L s left)"; [ "$L" -lt 60 ] && break
  (cd benchmarks && timeout $(( L - 10 )) python3 bench_set.py --set proj.ALIGN_BC=$v -- bench \
    videomamba_tiny_patch16_224_f8 --batch-size 32 --modes cudagraph,eager --rounds 3 --repeats 30 2>&1 | quiet \
    | tee "$OUT/video_${v}.txt" | grep -i "cudagraph\|eager\|error" | cut -c1-200)
done
echo "done, $(left) s left"
tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz --warning=no-file-changed . ; find "$OUT" -type f ! -name all.tar.gz -delete

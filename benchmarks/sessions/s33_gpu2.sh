#!/usr/bin/env bash
# Thirty-third session, call 2: after call 1 found whole graphed models slower with the fused patch embedding (an
# address cast to a pointer: unaligned loads, suspected) and a graph that outlived its input's offset tensor: the
# embedding's GPU tests; the embedding per call by path, reading four images in turn, with the kernel at an offset
# as under a graph; profiles of graphed Vim-Ti and S with the fused embedding on / off; then whole Vim-Ti, S and B,
# alternating processes (RMEETO_FUSED_EMBED_GEMM=1/0).
#   bash benchmarks/sessions/s33_gpu2.sh        (OUT=out/s33b by default; about 570 s)
set -uo pipefail
OUT=${OUT:-out/s33b} BUDGET_S=${BUDGET_S:-570} source benchmarks/_session.sh
echo "== GPU tests: embedding, whole models ($(left) s left)"
OUT=$OUT/tests WORKERS=16 LIMIT_S=150 bash benchmarks/gpu_tests.sh tests/ops/test_gpu_embed.py \
  tests/models/test_gpu_model.py
echo "== embedding per call ($(left) s left)"
(cd benchmarks && timeout 120 python3 bench_embed_gpu.py --sweep 2>&1 | quiet | tee "$OUT/embed.txt")
for m in vim_tiny_patch16_224 vim_small_patch16_224; do
  for v in 1 0; do
    echo "== profile $m graphed, RMEETO_FUSED_EMBED_GEMM=$v ($(left) s left)"
    RMEETO_FUSED_EMBED_GEMM=$v timeout 60 python3 benchmarks/profile_gpu.py --model $m --what inference \
      --modes cudagraph --rows 14 2>&1 | quiet > "$OUT/profile_${m}_$v.txt"
    grep "^# vim" "$OUT/profile_${m}_$v.txt" | cut -c1-200
  done
done
for m in vim_tiny_patch16_224 vim_small_patch16_224 vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224; do
  for v in 1 0; do
    L=$(left); [ "$L" -lt 40 ] && break
    modes=cudagraph; [ "$m" = vim_tiny_patch16_224 ] && modes=eager,cudagraph
    echo "== $m $modes, RMEETO_FUSED_EMBED_GEMM=$v ($L s left)"
    RMEETO_FUSED_EMBED_GEMM=$v timeout $(( L - 5 < 70 ? L - 5 : 70 )) python3 -m rmeeto bench $m --preset paper \
      --modes $modes --rounds 2 2>&1 | quiet | tee -a "$OUT/bench_${m}_$v.txt" \
      | grep -i "eager\|cudagraph\|error" | cut -c1-170
  done
done
echo "done, $(left) s left"

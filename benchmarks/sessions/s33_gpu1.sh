#!/usr/bin/env bash
# Thirty-third session, call 1: the GPU tests of the fused patch embedding (and the whole-model, plan and graph
# tests it touches); the embedding per call by path with a sweep of the fused kernel's tiles; then whole Vim-Ti,
# S and B, eager and graphed, with the fused embedding off / on (RMEETO_FUSED_EMBED_GEMM), alternating processes.
#   bash benchmarks/sessions/s33_gpu1.sh        (OUT=out/s33a by default; about 570 s)
set -uo pipefail
OUT=${OUT:-out/s33a} BUDGET_S=${BUDGET_S:-570} source benchmarks/_session.sh
echo "== GPU tests: embedding, whole models, plans, fast paths ($(left) s left)"
OUT=$OUT/tests WORKERS=16 LIMIT_S=200 bash benchmarks/gpu_tests.sh tests/ops/test_gpu_embed.py \
  tests/models/test_gpu_model.py tests/ops/test_gpu_plan.py tests/ops/test_gpu_inproj.py
echo "== embedding per call ($(left) s left)"
(cd benchmarks && timeout 120 python3 bench_embed_gpu.py --sweep 2>&1 | quiet | tee "$OUT/embed.txt")
for m in vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224 vim_tiny_patch16_224; do
  for v in 1 0; do
    L=$(left); [ "$L" -lt 45 ] && break
    modes=cudagraph; [ "$m" = vim_tiny_patch16_224 ] && modes=eager,cudagraph
    echo "== $m $modes, RMEETO_FUSED_EMBED_GEMM=$v ($L s left)"
    RMEETO_FUSED_EMBED_GEMM=$v timeout $(( L - 5 < 70 ? L - 5 : 70 )) python3 -m rmeeto bench $m --preset paper \
      --modes $modes --rounds 2 2>&1 | quiet | tee -a "$OUT/bench_${m}_$v.txt" \
      | grep -i "eager\|cudagraph\|error" | cut -c1-170
  done
done
echo "done, $(left) s left"

#!/usr/bin/env bash
# Twentieth session's first device call (one GPU): session 19's CPU-only changes on a GPU (the compiled GPU tests:
# the merging-block op, compile+cudagraph on a merged model, no recompile), then the compiled path timed call by
# call (compile_probe_gpu.py) and in rmeeto bench beside eager and graphed for Vim-S; eager host issue time by batch.
#   bash benchmarks/sessions/s20_gpu1.sh
set -uo pipefail
OUT=${OUT:-out/s20a} source benchmarks/_session.sh
echo "== 1. compiled GPU tests"
TORCH_LOGS=recompiles timeout 200 python3 -m pytest -m gpu -p no:cacheprovider -q -rfE --tb=short \
  tests/ops/test_gpu_launch.py -k compiled 2>&1 | tail -25 | tee "$OUT/tests.txt"
echo "== 2. compile probe, Vim-S ($(left) s left)"
PYTHONPATH=src:benchmarks TORCH_LOGS=recompiles timeout 150 python3 benchmarks/compile_probe_gpu.py \
  --variants unmerged,merged 2>&1 | quiet | tee "$OUT/probe_s.txt" | tail -20
echo "== 3. eager issue time by batch, Vim-Ti ($(left) s left)"
PYTHONPATH=src:benchmarks timeout 90 python3 benchmarks/host_issue_gpu.py --models vim_tiny_patch16_224 \
  2>&1 | quiet > "$OUT/issue_ti.txt"; grep -v "^ \|^#   \|ncalls" "$OUT/issue_ti.txt"
L=$(left); echo "== 4. Vim-S: eager, compile, compile+cudagraph, cudagraph ($L s left)"
timeout $(( L - 10 )) python3 -m rmeeto bench vim_small_patch16_224 --preset paper \
  --modes eager,compile,compile+cudagraph,cudagraph --rounds 3 --json "$OUT/bench_s.json" 2>&1 | quiet \
  | tee "$OUT/bench_s.txt" | grep -i "eager\|compile\|cudagraph\|error"
echo "done, $(left) s left"

#!/usr/bin/env bash
# Twentieth session, third device call: with the custom ops registered as Inductor fallbacks up front
# (rmeeto.ops.triton._inductor; PyTorch 2.11's implicit-fallback log line had stalled compiles of full-size models),
# the compiled GPU tests, the compile probe of Vim-S, and compile / compile+cudagraph beside eager and graphed.
#   bash benchmarks/sessions/s20_gpu3.sh
set -uo pipefail
OUT=${OUT:-out/s20c} source benchmarks/_session.sh
echo "== 1. compiled GPU tests"
timeout 150 python3 -m pytest -m gpu -p no:cacheprovider -q -rfE --tb=short tests/ops/test_gpu_launch.py \
  -k compiled 2>&1 | grep -v "Warning\|warn\|^  \|^$" | tail -6 | tee "$OUT/tests.txt"
echo "== 2. compile probe, Vim-S ($(left) s left)"
PYTHONPATH=src:benchmarks TORCH_LOGS=recompiles timeout 150 python3 benchmarks/compile_probe_gpu.py \
  --variants unmerged,merged 2>&1 | quiet | tee "$OUT/probe_s.txt" | grep -v "^V\|^I" | tail -8
L=$(left); echo "== 3. Vim-Ti, S, B: eager, compile, compile+cudagraph, cudagraph ($L s left)"
timeout $(( L - 10 )) python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224 \
  --preset paper --modes eager,compile,compile+cudagraph,cudagraph --rounds 3 --json "$OUT/bench.json" 2>&1 \
  | quiet | tee "$OUT/bench.txt" | grep -i "eager\|compile\|cudagraph\|error" | cut -c1-200
echo "done, $(left) s left"

#!/usr/bin/env bash
# Twentieth session, fourth device call: the traced merging-block op with its merging step prepared
# (MergeNormPlan, a fresh workspace per call) where it launched through the general matching path: the compiled
# GPU tests, the compile probe of merged Vim-S (host ms at batch 1), Vim-Ti and S eager beside compiled.
#   bash benchmarks/sessions/s20_gpu4.sh
set -uo pipefail
OUT=${OUT:-out/s20d} source benchmarks/_session.sh
echo "== 1. compiled GPU tests"
timeout 110 python3 -m pytest -m gpu -p no:cacheprovider -q -rfE --tb=short tests/ops/test_gpu_launch.py \
  -k compiled 2>&1 | grep -v "Warning\|warn\|^  \|^$" | tail -6 | tee "$OUT/tests.txt"
echo "== 2. compile probe, merged Vim-S ($(left) s left)"
PYTHONPATH=src:benchmarks timeout 70 python3 benchmarks/compile_probe_gpu.py --variants merged 2>&1 | quiet \
  | tee "$OUT/probe_s.txt" | tail -3
L=$(left); echo "== 3. Vim-Ti, S: eager, compile ($L s left)"
timeout $(( L - 5 )) python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 --preset paper \
  --modes eager,compile --rounds 3 --json "$OUT/bench.json" 2>&1 | quiet | tee "$OUT/bench.txt" \
  | grep -i "eager\|compile\|error" | cut -c1-200
echo "done, $(left) s left"

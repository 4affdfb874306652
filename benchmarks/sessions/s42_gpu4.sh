#!/usr/bin/env bash
# Forty-second session, call 4: the benchmark tools after their refactor (one '--' split, the training-step tools'
# shared loop) run once each at small sizes; no number of this call is a result.
#   bash benchmarks/sessions/s42_gpu4.sh        (OUT=out/s42d by default; about 300 s)
set -uo pipefail
OUT=${OUT:-out/s42d} BUDGET_S=${BUDGET_S:-300} source benchmarks/_session.sh
cd benchmarks
run() { local name=$1; shift; echo "== $name ($(left) s left)"; timeout 150 "$@" > "$OUT/$name.txt" 2>&1; \
  echo "rc $?"; grep -v "Warning\|warn(" "$OUT/$name.txt" | tail -4 | cut -c1-200; }
run oracle python3 match_oracle_gpu.py --oracle nomatch --check vim_tiny_patch16_224 -- bench vim_tiny_patch16_224 \
  --preset paper --batch-size 16 --modes cudagraph --rounds 1 --repeats 5
run bench_set python3 bench_set.py --set one_j=True -- bench vim_tiny_patch16_224 --batch-size 16 --modes eager \
  --rounds 1 --repeats 5
run sync_probe python3 train_sync_probe_gpu.py --batch 16 --steps 1 --variants merged
run host_profile python3 host_profile_train_gpu.py --model vim_tiny_patch16_224 --batch 16 --steps 1 --rows 3 \
  --variants unmerged
run tuned_bench python3 tuned_bench.py --batch 16 -- flops vim_tiny_patch16_224
run scan_exp python3 scan_exp_gpu.py --variant mufu --dims 384 --lengths 76 --batch 16 -- flops vim_tiny_patch16_224
echo "done, $(left) s left"
cd ..; tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz --warning=no-file-changed . ; find "$OUT" -type f ! -name all.tar.gz -delete

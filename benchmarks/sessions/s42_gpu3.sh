#!/usr/bin/env bash
# Forty-second session, call 3: why the eager re-training step of merged Vim-Ti is slower than the unmerged one
# (call 2: 841 against 1,227 img/s): the step's synchronising calls and host time (train_sync_probe_gpu.py), then
# cProfile of the step (host_profile_train_gpu.py).
#   bash benchmarks/sessions/s42_gpu3.sh        (OUT=out/s42c by default; about 330 s)
set -uo pipefail
OUT=${OUT:-out/s42c} BUDGET_S=${BUDGET_S:-330} source benchmarks/_session.sh
cd benchmarks
L=$(left); echo "== sync probe, Vim-Ti ($L s left)"
timeout 150 python3 train_sync_probe_gpu.py --model vim_tiny_patch16_224 > "$OUT/sync_ti.txt" 2>&1
grep -v "^\[W\|^  warnings\|UserWarning" "$OUT/sync_ti.txt" | head -60 | cut -c1-220
grep -c "^\[W" "$OUT/sync_ti.txt"
L=$(left); echo "== cProfile, Vim-Ti ($L s left)"
timeout $(( L - 10 )) python3 host_profile_train_gpu.py --model vim_tiny_patch16_224 --steps 4 --rows 25 \
  > "$OUT/cprofile_ti.txt" 2>&1
grep "^#" "$OUT/cprofile_ti.txt" | cut -c1-200
echo "done, $(left) s left"
cd ..; tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz --warning=no-file-changed . ; find "$OUT" -type f ! -name all.tar.gz -delete

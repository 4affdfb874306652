#!/usr/bin/env bash
# Twenty-third session, call 5: A/B in one run of library_op (this tree) against torch.library.custom_op (OTHER:
# HEAD's src, unpacked in .ab/old) for compiled Vim-Ti: host ms per compiled forward at batch 1 and `rmeeto bench
# --modes compile`, trees alternating.  OTHER=.ab/old/src bash benchmarks/sessions/s23_gpu5.sh   (carry .ab/old)
set -uo pipefail
OUT=${OUT:-out/s23e} BUDGET_S=${BUDGET_S:-330} source benchmarks/_session.sh
for tree in src "$OTHER" src "$OTHER"; do
  tag=$(echo "$tree" | tr / _); L=$(left); [ "$L" -gt 60 ] || break
  echo "== $tree ($L s left)"
  PYTHONPATH=$tree timeout 60 python3 benchmarks/host_profile_gpu.py --models vim_tiny_patch16_224 \
    --variants merged,unmerged --rows 0 --compile 2>&1 | grep "host .* ms per forward" | tee -a "$OUT/hp_$tag.txt"
  PYTHONPATH=$tree timeout 80 python3 -m rmeeto bench vim_tiny_patch16_224 --preset paper --modes compile 2>&1 \
    | quiet | tee -a "$OUT/bench_$tag.txt" | grep -i "compile \|error" | cut -c1-200
done
echo "done, $(left) s left"

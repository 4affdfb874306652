#!/usr/bin/env bash
# A/B of the compiled path between this tree (src) and another (a `git archive REV src` unpacked in .ab/NAME/src,
# carried to the device): compile probe (static batch-128 graph, then batch 1 / dynamic), then `rmeeto bench
# --modes compile` of merged + unmerged, trees alternating, then the compiled profile of merged Vim-S per tree.
#   mkdir -p .ab/c5 && git archive c5a2ef3 src | tar -x -C .ab/c5      # here, then on the device (carry .ab/c5):
#   OTHER=.ab/c5/src OUT=$OUT/ab BUDGET_S=560 bash benchmarks/ab_compile_gpu.sh
# (made for session 20's reverted c5a2ef3: compiled merged Vim-S 8,079 img/s in its bench against 12,014 for HEAD)
set -uo pipefail
OUT=${OUT:-out/ab_compile} source benchmarks/_session.sh
MODEL=${MODEL:-vim_small_patch16_224}
for tree in src "$OTHER" src "$OTHER"; do
  tag=$(echo "$tree" | tr / _)
  L=$(left); [ "$L" -gt 90 ] || break
  echo "== $tree: probe + bench compile ($L s left)"
  PYTHONPATH=$tree:benchmarks timeout 120 python3 benchmarks/compile_probe_gpu.py --model "$MODEL" --variants merged \
    2>&1 | quiet | tail -4 | tee -a "$OUT/probe_$tag.txt"
  PYTHONPATH=$tree timeout 150 python3 -m rmeeto bench "$MODEL" --preset paper --modes compile --rounds 2 2>&1 \
    | quiet | tee -a "$OUT/bench_$tag.txt" | grep -i "compile\|error" | cut -c1-200
done
for tree in src "$OTHER"; do
  L=$(left); [ "$L" -gt 60 ] || break
  echo "== $tree: compiled profile, merged ($L s left)"
  PYTHONPATH=$tree:benchmarks timeout $(( L - 10 )) python3 benchmarks/profile_gpu.py --model "$MODEL" \
    --what inference --variants merged --modes compile 2>&1 | quiet > "$OUT/profile_$(echo "$tree" | tr / _).txt"
  tail -12 "$OUT/profile_$(echo "$tree" | tr / _).txt"
done
echo "done, $(left) s left"

#!/usr/bin/env bash
# Twentieth session, second device call: why does compiling a full-size Vim not finish on the final tree? The compile
# probe of merged Vim-Ti with dynamo's step log, its stacks dumped (faulthandler, SIGABRT) when the time runs out;
# then the tree of 285df15 (.ab/c1/src, whose compiled Vim-S took 15-19 s) as the control.
#   bash benchmarks/sessions/s20_gpu2.sh
set -uo pipefail
OUT=${OUT:-out/s20b} source benchmarks/_session.sh
for tree in src .ab/c1/src; do
  tag=$(echo "$tree" | tr / _)
  echo "== compile probe, merged Vim-Ti, tree $tree ($(left) s left)"
  PYTHONPATH=$tree:benchmarks TORCH_LOGS=dynamo,recompiles timeout -s ABRT "${LIMIT:-110}" python3 -X faulthandler \
    benchmarks/compile_probe_gpu.py --model vim_tiny_patch16_224 --variants merged > "$OUT/probe_$tag.txt" 2>&1
  echo "exit $?"; grep -v "Warning\|warn" "$OUT/probe_$tag.txt" | grep -i "step\|first\|ms\|call\|recompil" | cut -c1-220 | head -30
  grep -n "Thread\|File" "$OUT/probe_$tag.txt" | grep -v "threading.py\|concurrent" | head -50 | cut -c1-200
done
echo "done, $(left) s left"

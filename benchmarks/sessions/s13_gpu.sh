#!/usr/bin/env bash
# Thirteenth session's first device call (one GPU): the scan forward's instruction diet (issue 14). Its "new" leg ran a
# float32 copy of B / C ahead of the scan (RMEETO_SCAN_BC_F32, since removed: it was slower), "bc16" the same code
# with that copy off; the script is kept as the record of call 1 (results/s13/call1).
#   OLD=<dir holding an older tree's src/ and old_scan.py> bash benchmarks/sessions/s13_gpu.sh
# 1. the two-direction scan forward alone, this tree (B / C converted to float32 ahead, and not) against the
#    old tree's kernel (benchmarks/scan_ab_gpu.py);
# 2. the GPU tests of the scan, the two-direction scan and the whole model;
# 3. `rmeeto bench` Vim-Ti/S/B graphed: this tree, the old tree, this tree with RMEETO_SCAN_BC_F32=0;
# 4. Nsight Compute on one launch of the forward kernel, this tree and the old one.
set -uo pipefail
OUT=${OUT:-out/s13}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s); left() { echo $(( ${BUDGET_S:-570} - ($(date +%s) - T0) )); }
quiet() { grep -v "Warning\|warn(\|return Variable\|_warn_once\|^$" ; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | head -1 | tee "$OUT/gpu.txt"
echo "== 1. kernel A/B"
PYTHONPATH=src timeout 120 python3 benchmarks/scan_ab_gpu.py ${OLD:+--old $OLD/old_scan.py} 2>&1 | quiet | tee "$OUT/scan_ab.txt"
echo "== 2. GPU tests ($(left) s left)"
PYTHONPATH=src OUT="$OUT/tests" WORKERS=16 LIMIT_S=${TESTS_S:-200} bash benchmarks/gpu_tests.sh ${TESTS:-tests/ops/test_gpu_scan.py \
  tests/ops/test_gpu_bidir.py tests/ops/test_gpu_scan_branches.py tests/models/test_gpu_model.py} 2>&1 | tail -8
MODELS=${MODELS:-vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224}
for v in new old bc16; do
  L=$(left); echo "== 3. bench $v ($L s left)"
  [ "$L" -gt 120 ] || break
  src=src; [ "$v" = old ] && src=$OLD/src
  bc=1; [ "$v" = bc16 ] && bc=0
  [ "$v" = old ] && [ -z "${OLD:-}" ] && continue
  PYTHONPATH=$src RMEETO_SCAN_BC_F32=$bc timeout $(( L - 90 )) python3 -m rmeeto bench $MODELS --preset paper \
    --modes ${MODES:-cudagraph} --json "$OUT/bench_$v.json" 2>&1 | quiet | tee "$OUT/bench_$v.txt"
done
for v in new old; do
  L=$(left); echo "== 4. ncu $v ($L s left)"
  [ "$L" -gt 40 ] || break
  [ "$v" = old ] && [ -z "${OLD:-}" ] && continue
  PYTHONPATH=src timeout $(( L - 10 )) ncu --clock-control none --kernel-name regex:_scan_bidir_fwd_kernel \
    --launch-skip 1 --launch-count 1 --section SpeedOfLight --section ComputeWorkloadAnalysis \
    --section SchedulerStats --section WarpStateStats --section Occupancy --section InstructionStats \
    python3 benchmarks/scan_ab_gpu.py --lengths 197 --once $v ${OLD:+--old $OLD/old_scan.py} > "$OUT/ncu_$v.txt" 2>&1
  grep -E "Duration|Issue Slots Busy|Issued Ipc|No Eligible|Achieved Occupancy|Registers Per|Executed Ipc|Pipe|Warp Cycles Per Issued|Compute \(SM\)|Memory Throughput" "$OUT/ncu_$v.txt" | head -20
done

#!/usr/bin/env bash
# Sixth session's GPU runs, one phase per device call (each under the 10-minute limit).
#   bash benchmarks/sessions/s6_gpu.sh jpeg     # issue 13 on a 2-GPU host: 2-GPU tests, then the "minutes" runs: synthetic
#                                      # 1-GPU rate, real-JPEG epoch on 1 GPU and on 2 GPUs (GPU pipeline, DDP graphs)
#   bash benchmarks/sessions/s6_gpu.sh extra    # input pipeline alone, Ti/S/B step rates, synthetic 2-GPU, partner tiles
set -uo pipefail
PHASE=${1:?phase}; OUT=${OUT:-out/s6}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-src}
quiet() { grep -v "Warning\|warn(\|return Variable\|_warn_once" ; }
M=(env OUT="$OUT/minutes" DATA=/tmp/imagenet_like WORKERS=${WORKERS:-14} PIPELINE=${PIPELINE:-gpu})
synth() {  # synthetic-data retrain, 2 epochs (epoch 2 is the steady rate); $1 GPUs
  local n=$1 dir="$OUT/synth$1"; rm -rf "$dir"
  [ -f /tmp/vim_small_patch16_224_random.pth ] || python3 -c "
import rmeeto, torch
from rmeeto.checkpoint import save_checkpoint
torch.manual_seed(0)
save_checkpoint(rmeeto.create_model('vim_small_patch16_224'), '/tmp/vim_small_patch16_224_random.pth')"
  local args=(retrain --model vim_small_patch16_224 --checkpoint /tmp/vim_small_patch16_224_random.pth --data synthetic
              --preset paper --epochs 2 -b 128 --amp bf16 -j 6 --no-progress --out "$dir" ${SYNTH_EXTRA:-})
  if [ "$n" -eq 1 ]; then timeout 150 python3 -m rmeeto "${args[@]}" > "$OUT/synth$n.log" 2>&1
  else timeout 150 torchrun --standalone --nproc_per_node "$n" -m rmeeto "${args[@]}" > "$OUT/synth$n.log" 2>&1; fi
  echo "== synthetic, $n GPU(s), exit $?"; tail -n 3 "$OUT/synth$n.log"
  python3 -c "
import json
for l in open('$dir/log.jsonl'):
    r = json.loads(l); print(f\"  epoch {r['epoch']}: {r['images_per_s']:.1f} img/s ({r['images_per_s'] / $n:.1f} per GPU), {r['seconds']:.1f} s\")" \
    | tee -a "$OUT/synth_summary.txt"
}
case "$PHASE" in
jpeg)
  nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/gpu.txt"
  (IMAGES=100000 VAL_IMAGES=10000 "${M[@]}" bash benchmarks/minutes_gpu.sh make > "$OUT/make.log" 2>&1) &
  MK=$!
  timeout 230 python3 -m pytest -q -p no:cacheprovider --tb=line tests/train/test_gpu_ddp.py tests/test_gpu_data_cuda.py \
    2>&1 | grep -E "^/|^E |Error|passed|failed" | cut -c1-300 | tail -15 | tee "$OUT/tests_2gpu.log"
  wait $MK; tail -3 "$OUT/make.log"
  "${M[@]}" bash benchmarks/minutes_gpu.sh gpu1 2>&1 | quiet
  "${M[@]}" EXTRA=--ddp-graphs bash benchmarks/minutes_gpu.sh gpuN 2>&1 | quiet
  synth 1 ;;
jpeg2)  # the same on the CPU pipeline (the GPU pipeline took GPU time from training: 745 img/s vs 1,027 synthetic)
  (IMAGES=100000 VAL_IMAGES=10000 "${M[@]}" bash benchmarks/minutes_gpu.sh make > "$OUT/make.log" 2>&1) &
  MK=$!
  timeout 300 python3 -m pytest -q -p no:cacheprovider -rf --tb=line tests/train/test_gpu_ddp.py tests/test_gpu_data_cuda.py \
    > "$OUT/tests_2gpu_full.log" 2>&1; echo "pytest exit $?"
  grep -E "^/|^E |Error|passed|failed" "$OUT/tests_2gpu_full.log" | cut -c1-300 | tail -15
  wait $MK; tail -3 "$OUT/make.log"
  "${M[@]}" PIPELINE=cpu WORKERS=15 bash benchmarks/minutes_gpu.sh gpu1 2>&1 | quiet
  "${M[@]}" PIPELINE=cpu WORKERS=15 EXTRA=--ddp-graphs bash benchmarks/minutes_gpu.sh gpuN 2>&1 | quiet ;;
extra)
  (IMAGES=20000 VAL_IMAGES=100 "${M[@]}" DATA=/tmp/jpeg_small bash benchmarks/minutes_gpu.sh make > "$OUT/make_small.log" 2>&1) &
  MK=$!
  timeout 100 python3 benchmarks/bench_merge_gpu.py --video-schedule --partner-tiles 2>&1 | quiet | tee "$OUT/partner_tiles.txt" | tail -30
  SYNTH_EXTRA=--ddp-graphs synth 2
  wait $MK
  timeout 120 python3 -m rmeeto bench-data /tmp/jpeg_small/train --workers 1,4,8,14 --batch-size 128 \
    --json "$OUT/data.json" 2>&1 | quiet | tee "$OUT/data.txt"
  timeout 150 "${M[@]}" bash benchmarks/minutes_gpu.sh steps 2>&1 | quiet | tail -12 ;;
final)  # the session's last call on a 2-GPU host: benchmarks on GPU 0 while the correctness tests run on GPU 1,
        # then the 2-GPU tests; at most 8 files come back, so each stream writes one log. OLD: session-5 tree.
  OLD=${OLD:-.old6/src}
  nvidia-smi --query-gpu=name --format=csv,noheader | head -1
  (
    export CUDA_VISIBLE_DEVICES=0
    B3=(vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224)
    echo "== inference, this tree (scan forward tile picked first)"; timeout 160 python3 benchmarks/tuned_bench.py -- \
      bench "${B3[@]}" --modes eager,cudagraph --warmup 5 --repeats 20 --json "$OUT/tsb.json" 2>&1 | quiet
    echo "== training step, this tree"; timeout 100 python3 -m rmeeto bench vim_small_patch16_224 --train \
      --no-inference --modes eager,cudagraph --train-repeats 6 --json "$OUT/train.json" 2>&1 | quiet
    echo "== training step, RMEETO_XLANE_BWD=0"; RMEETO_XLANE_BWD=0 timeout 60 python3 -m rmeeto bench \
      vim_small_patch16_224 --train --no-inference --modes cudagraph --train-repeats 6 2>&1 | quiet
    echo "== inference, $OLD"; PYTHONPATH=$OLD timeout 120 python3 -m rmeeto bench "${B3[@]}" \
      --modes eager,cudagraph --warmup 5 --repeats 20 2>&1 | quiet
    echo "== video"; timeout 50 python3 -m rmeeto bench videomamba_small_patch16_224_f8 --batch-size 32 \
      --modes cudagraph --warmup 5 --repeats 10 2>&1 | quiet
    echo "== scan backward"; timeout 70 python3 benchmarks/bench_scan_bwd_gpu.py --lengths 197 --configs 0,1,3 2>&1 | quiet
    echo "== conv"; timeout 50 python3 benchmarks/bench_conv_gpu.py 2>&1 | quiet
    echo "== profile"; timeout 70 python3 benchmarks/profile_gpu.py --what inference --variants unmerged,merged \
      --modes eager,cudagraph --rows 8 2>&1 | quiet
    echo "== merge layers"; timeout 40 python3 benchmarks/profile_gpu.py --model vim_tiny_patch16_224 --merge-layers \
      --what none 2>&1 | quiet
  ) > "$OUT/g0.log" 2>&1 &
  G0=$!
  (
    export CUDA_VISIBLE_DEVICES=1
    timeout ${TEST_S:-230} python3 -m pytest -v -p no:cacheprovider -rf --tb=line ${GPU_TESTS:?} 2>&1 \
      | grep -v "^$\|Warning\|warn(" | cut -c1-300 | tail -250
    echo "== partner tiles, video"; timeout 90 python3 benchmarks/tune_partner_video.py 2>&1 | quiet | tail -30
    timeout 50 python3 -m rmeeto.bench_data make-jpegs /tmp/jpeg_small --images 16000 --classes 1000 --workers 12 2>&1 | tail -1
    echo "== data"; timeout 90 python3 -m rmeeto bench-data /tmp/jpeg_small --workers 1,4,8,14 --batch-size 128 \
      --json "$OUT/data.json" 2>&1 | quiet
    echo "== steps Ti/B"; timeout 90 python3 -m rmeeto bench vim_tiny_patch16_224 vim_base_patch16_224 --train \
      --no-inference --modes cudagraph --train-repeats 6 --json "$OUT/steps_tb.json" 2>&1 | quiet
  ) > "$OUT/g1.log" 2>&1 &
  G1=$!
  wait $G0 $G1
  timeout ${PAIR_S:-50} python3 -m pytest -q -p no:cacheprovider -rf --tb=line tests/train/test_gpu_ddp.py -k pipeline \
    > "$OUT/pair.log" 2>&1; tail -5 "$OUT/pair.log"
  exit 0 ;;
*) echo "unknown phase"; exit 2 ;;
esac
find "$OUT" -name "*.pth" -delete  # checkpoints are too large to bring back; their writing is timed
# the device returns only a few files: everything in one archive
(cd "$OUT" && tar czf "/tmp/s6_$PHASE.tgz" . && rm -rf ./* && mv "/tmp/s6_$PHASE.tgz" .)

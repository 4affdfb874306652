#!/usr/bin/env bash
# Issue 13, the "minutes" benchmark: R-MeeTo re-training end to end on real JPEG files, timed as a user sees it
# (loading, training, evaluation, checkpoint writing), then projected to 3 epochs of ImageNet-1K on 8 GPUs.
#
# Phases (each fits the device's 10-minute limit per command at the defaults; run them in order):
#   bash benchmarks/minutes_gpu.sh make      # ImageNet-like JPEG folder: $IMAGES train + $VAL_IMAGES val, 1000 classes
#   bash benchmarks/minutes_gpu.sh data      # rmeeto bench-data: CPU workers vs the GPU pipeline on that folder
#   bash benchmarks/minutes_gpu.sh steps     # rmeeto bench --train: synthetic step rates of Vim-Ti/S/B (paper merge)
#   bash benchmarks/minutes_gpu.sh synth     # the same settings on --data synthetic, 2 epochs: the rate real JPEGs are
#                                            # held to (epoch 2, after compilation), for 'project' to compare
#   bash benchmarks/minutes_gpu.sh gpu1      # rmeeto retrain, paper preset, Vim-S r=11, 1 epoch on 1 GPU
#   bash benchmarks/minutes_gpu.sh gpuN      # the same with torchrun on $NGPUS GPUs (default: all)
#   bash benchmarks/minutes_gpu.sh project   # 3 epochs of ImageNet-1K on 8 GPUs for Ti/S/B vs the paper
#   bash benchmarks/minutes_gpu.sh all       # every phase (needs more than 10 minutes at the defaults)
# Parameters (environment): IMAGES (100000), VAL_IMAGES (10000), CLASSES (1000), DATA (/tmp/imagenet_like),
# OUT (out/minutes), NGPUS (all), WORKERS (loader workers per GPU, 8), BATCH (per GPU, 128), PIPELINE (auto),
# MODEL (vim_small_patch16_224), EXTRA (more retrain flags, e.g. "--ddp-graphs").
# The make phase at 100k images writes ~11 GB; the 1-GPU epoch at ~1,000 img/s takes ~2 minutes plus evaluation.
set -uo pipefail
PHASE=${1:-all}
IMAGES=${IMAGES:-100000}; VAL_IMAGES=${VAL_IMAGES:-10000}; CLASSES=${CLASSES:-1000}
DATA=${DATA:-/tmp/imagenet_like}; OUT=${OUT:-out/minutes}; WORKERS=${WORKERS:-8}; BATCH=${BATCH:-128}
PIPELINE=${PIPELINE:-auto}; MODEL=${MODEL:-vim_small_patch16_224}; EXTRA=${EXTRA:-}
NGPUS=${NGPUS:-$(nvidia-smi -L | wc -l)}
export PYTHONPATH=${PYTHONPATH:-src} PYTHONUNBUFFERED=1
mkdir -p "$OUT"
CKPT=/tmp/${MODEL}_random.pth

make_data() {
  python3 -m rmeeto.bench_data make-jpegs "$DATA/train" --images "$IMAGES" --classes "$CLASSES" --seed 0
  python3 -m rmeeto.bench_data make-jpegs "$DATA/val" --images "$VAL_IMAGES" --classes "$CLASSES" --seed 1
  du -sh "$DATA/train" "$DATA/val" | tee "$OUT/data_size.txt"
}

checkpoint() {  # random weights: the speed does not depend on them
  [ -f "$CKPT" ] || python3 -c "
import rmeeto, torch
from rmeeto.checkpoint import save_checkpoint
torch.manual_seed(0)
save_checkpoint(rmeeto.create_model('$MODEL'), '$CKPT')"
}

retrain() {  # retrain NGPU: one epoch, wall time of the whole command in OUT/gpuN/wall_s
  local n=$1 dir="$OUT/gpu$1"
  checkpoint
  rm -rf "$dir"; mkdir -p "$dir"
  local args=(retrain --model "$MODEL" --checkpoint "$CKPT" --data "$DATA" --preset paper --epochs 1 -b "$BATCH"
              --amp bf16 -j "$WORKERS" --pipeline "$PIPELINE" --no-progress --out "$dir" $EXTRA)
  local t0; t0=$(date +%s.%N)
  if [ "$n" -eq 1 ]; then
    python3 -m rmeeto "${args[@]}" > "$dir/run.log" 2>&1
  else
    torchrun --standalone --nproc_per_node "$n" -m rmeeto "${args[@]}" > "$dir/run.log" 2>&1
  fi
  local rc=$?
  python3 -c "print(round($(date +%s.%N) - $t0, 1))" > "$dir/wall_s"
  tail -n 4 "$dir/run.log"
  echo "== $n GPU(s): exit $rc, wall $(cat "$dir/wall_s") s" | tee -a "$OUT/summary.txt"
}

synth() {  # the synthetic-data rate of the same settings: epoch 1 compiles, epoch 2 is the rate
  checkpoint
  local dir="$OUT/synth"; rm -rf "$dir"; mkdir -p "$dir"
  python3 -m rmeeto retrain --model "$MODEL" --checkpoint "$CKPT" --data synthetic --preset paper --epochs 2 \
    -b "$BATCH" --amp bf16 -j 6 --no-progress --out "$dir" $EXTRA > "$dir/run.log" 2>&1
  echo "== synthetic: exit $?" | tee -a "$OUT/summary.txt"
  find "$dir" -name "*.pth" -delete
}

project() {
  python3 - "$OUT" "$IMAGES" "$VAL_IMAGES" "$BATCH" <<'EOF'
"""Project 3 epochs of ImageNet-1K on 8 GPUs from the measured runs.

Training: 3 x 1,281,167 images / (8 x the measured per-GPU rate on the most GPUs measured: it includes the DDP
cost). Vim-Ti and Vim-B: the Vim-S real-JPEG rate scaled by their synthetic training-step rate relative to
Vim-S ('steps' phase), else left out. Evaluation: the measured validation seconds per image, x 50,000 val images
x 3 epochs, spread over 8 GPUs. Fixed cost: the measured wall time minus the epoch's training and evaluation
(start-up, data indexing, CUDA-graph capture, checkpoint writing), counted once.

Where the epoch's record splits its rate at the first optimizer step (first_step_s, steady_images_per_s), a
second projection uses the steady per-GPU rate for the images and adds the first step's seconds once (loader
workers starting, the first batches, graph captures: a cost of the first epoch, not of every epoch). The whole-
epoch projection counts that start-up in every epoch at the benchmark's epoch length, so it is the upper one."""
import json, math, os, sys

out, n_train, n_val, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
IMAGENET_TRAIN, IMAGENET_VAL, EPOCHS, GPUS = 1_281_167, 50_000, 3, 8
PAPER = {"vim_tiny_patch16_224": 16.2, "vim_small_patch16_224": 25.2, "vim_base_patch16_224": 57.6}  # 1x8 H100
runs = {}
for name in sorted(os.listdir(out)):
    path = os.path.join(out, name)
    if name.startswith("gpu") and os.path.isfile(os.path.join(path, "log.jsonl")):
        n = int(name[3:])
        rec = [json.loads(l) for l in open(os.path.join(path, "log.jsonl"))][-1]
        # images one epoch trains: timm's RepeatAugSampler takes len // 256 * 256 per epoch, split over ranks
        per_rank = math.floor(n_train // 256 * 256 / n) // batch * batch
        train_s = per_rank * n / rec["images_per_s"]
        val_s = max(rec["seconds"] - train_s, 0.0)
        wall = float(open(os.path.join(path, "wall_s")).read())
        steady = rec.get("steady_images_per_s")
        runs[n] = dict(rate=rec["images_per_s"], per_gpu=rec["images_per_s"] / n, train_s=train_s, val_s=val_s,
                       wall=wall, fixed=max(wall - rec["seconds"], 0.0),
                       steady_per_gpu=steady / n if steady else None, first_s=rec.get("first_step_s"))
        print(f"measured {n} GPU(s): {rec['images_per_s']:.0f} img/s ({rec['images_per_s'] / n:.0f} per GPU), "
              f"epoch train {train_s:.0f} s + eval {val_s:.0f} s, whole run {wall:.0f} s"
              + (f"; after the first step ({rec['first_step_s']:.1f} s) {steady:.0f} img/s ({steady / n:.0f} per GPU)"
                 if steady else "")
              + (f"; {rec['first_batch_s']:.1f} s of the first step waiting for data"
                 if rec.get("first_batch_s") is not None else ""))
if not runs:
    sys.exit("no measured runs under " + out)
synth_log = os.path.join(out, "synth", "log.jsonl")
if 1 in runs and os.path.isfile(synth_log):
    recs = [json.loads(l) for l in open(synth_log)]
    if len(recs) >= 2:
        syn, real = recs[-1], [json.loads(l) for l in open(os.path.join(out, "gpu1", "log.jsonl"))][-1]
        line = (f"real JPEGs vs synthetic data (its epoch {syn['epoch'] + 1}), 1 GPU: whole epoch "
                f"{real['images_per_s']:.0f} / {syn['images_per_s']:.0f} img/s = "
                f"{real['images_per_s'] / syn['images_per_s']:.1%}")
        if real.get("steady_images_per_s") and syn.get("steady_images_per_s"):
            line += (f"; after the first step {real['steady_images_per_s']:.0f} / {syn['steady_images_per_s']:.0f} = "
                     f"{real['steady_images_per_s'] / syn['steady_images_per_s']:.1%}")
        print(line)
if 1 in runs and len(runs) > 1:
    n = max(runs)
    print(f"scaling 1 -> {n} GPUs: {runs[n]['rate'] / runs[1]['rate']:.2f}x "
          f"(per-GPU efficiency {runs[n]['per_gpu'] / runs[1]['per_gpu']:.1%})"
          + (f"; steady rates {n * runs[n]['steady_per_gpu'] / runs[1]['steady_per_gpu']:.2f}x"
             if runs[n]["steady_per_gpu"] and runs[1]["steady_per_gpu"] else ""))
base = runs[max(runs)]
steps = {}
steps_file = os.path.join(out, "steps.json")
if os.path.isfile(steps_file):
    for r in json.load(open(steps_file))["results"]:
        if r.get("section") == "train" and r.get("merge") is not None:
            steps[r["model"]] = r["images_per_s"]
print(f"\nprojected 3 epochs of ImageNet-1K on {GPUS} GPUs (per-GPU rate from the {max(runs)}-GPU run):")
steady_cols = base["steady_per_gpu"] is not None
print(f"{'model':<24} {'img/s per GPU':>13} {'train min':>9} {'eval min':>8} {'total min':>9}"
      + (f" {'steady img/s':>12} {'total min (steady)':>18}" if steady_cols else "") + f" {'paper 1x8 H100':>14}")
for model, paper in PAPER.items():
    if model == "vim_small_patch16_224":
        scale = 1.0
    elif model in steps and "vim_small_patch16_224" in steps:
        scale = steps[model] / steps["vim_small_patch16_224"]
    else:
        print(f"{model:<24} (run the 'steps' phase to project it)")
        continue
    per_gpu = base["per_gpu"] * scale
    train_min = EPOCHS * IMAGENET_TRAIN / (GPUS * per_gpu) / 60
    eval_min = EPOCHS * base["val_s"] * max(runs) / n_val * IMAGENET_VAL / GPUS / 60
    total = train_min + eval_min + base["fixed"] / 60
    row = f"{model:<24} {per_gpu:>13.0f} {train_min:>9.1f} {eval_min:>8.1f} {total:>9.1f}"
    if steady_cols:
        steady = base["steady_per_gpu"] * scale
        total_steady = EPOCHS * IMAGENET_TRAIN / (GPUS * steady) / 60 + eval_min + (base["fixed"] + base["first_s"]) / 60
        row += f" {steady:>12.0f} {total_steady:>18.1f}"
    print(row + f" {paper:>14.1f}")
EOF
}

bench_data() {
  python3 -m rmeeto bench-data "$DATA/train" --batch-size "$BATCH" --json "$OUT/data.json" | tee "$OUT/data.txt"
}

bench_steps() {  # synthetic training-step rates, to scale the Vim-S measurement to Ti and B
  python3 -m rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224 --train --no-inference \
    --batch-size "$BATCH" --json "$OUT/steps.json" | tee "$OUT/steps.txt"
}

case "$PHASE" in
  make) make_data ;;
  data) bench_data ;;
  steps) bench_steps ;;
  synth) synth ;;
  gpu1) retrain 1 ;;
  gpuN) retrain "$NGPUS" ;;
  project) project | tee "$OUT/projection.txt" ;;
  all) nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tee "$OUT/gpu.txt"
       make_data; bench_data; bench_steps; synth; retrain 1; [ "$NGPUS" -gt 1 ] && retrain "$NGPUS"; project | tee "$OUT/projection.txt" ;;
  *) echo "unknown phase $PHASE (make, data, steps, synth, gpu1, gpuN, project, all)"; exit 2 ;;
esac

"""``rmeeto retrain``: re-train a merging Vim with distillation from the unmerged checkpoint (or train from scratch)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rmeeto.cli import CLIError, training_errors
from rmeeto.argtypes import (auto_augment_policy, class_list_file, device_name, finite_float, nonneg_float,
                              nonneg_int, open_unit_float, positive_float, positive_int, positive_unit_float,
                              seed_int, unit_float, unit_float_below_one, worker_count)
from rmeeto.cli._merge_args import MERGE_FLAG_DESTS, add_merge_arguments, merge_config_from_args
from rmeeto.data import SUBSET_MODES

if TYPE_CHECKING:
    from rmeeto.train import TrainConfig

HELP = "re-train a merging model with distillation from the unmerged one (R-MeeTo), or train from scratch"
DESCRIPTION = """\
Initialise a merging student from --checkpoint, distil it from the same checkpoint unmerged (frozen, eval mode)
and write last.pth (every epoch, and every --save-every-steps steps), best.pth (by val top-1) and log.jsonl
(one JSON line per epoch) into --out. The same command runs in one process or under torchrun (DDP; NCCL on
GPU, gloo on CPU); only rank 0 writes. Ctrl-C / SIGTERM save last.pth and exit; --resume auto continues from
it with the stored settings (no other flag needed), reproducing the uninterrupted run.

--preset paper sets the merge config AND the official training recipe (lr 2e-5 per 512 images, min lr 1e-6,
batch 128, wd 0.05 on all params, no warmup, drop path 0.1, mixup 0.8 / cutmix 1.0, smoothing 0.1,
rand-m9-mstd0.5-inc1, random erasing 0.25, repeated augmentation x3, epochs per model, EMA for Vim-B,
alpha 0.5); any flag given explicitly overrides it. Deliberate differences from the release are listed by
'rmeeto retrain --paper-differences'.

Video models (videomamba_*_f8) train on a clip folder: --data DIR with DIR/train.csv and DIR/val.csv (or .txt),
one 'path label' line per video, paths relative to DIR, separator ' ', ',' or tab (found from the first line).
-b counts videos; each yields --repeated-aug clips (2 under the preset: the official repeated sampling) into
the same batch, so a batch holds b x repeated-aug clips and the lr scaling counts clips. Their --preset paper
is the official Kinetics recipe: lr 4e-5 per 512 clips (= 2e-5 per 256), batch 32 x accumulation 2 x 2 clips,
5 warm-up epochs from 2e-6, cosine to 2e-6, AdamW wd 0.1 (1-D params, biases and the cls/pos/temporal
embeddings exempt; A_log decayed), layer decay 0.75 (only cls/pos/patch embeddings scaled), mixup 0.8 /
cutmix 1.0 (one box through all frames), smoothing 0.1, drop path 0.1, rand-m5-n2-mstd0.25-inc1, erasing 0.25
as one cube, bf16 on CUDA, Ti 30 / S 15 / M 15 epochs, and NO distillation (--alpha 0.5 distils from the
unmerged checkpoint). Image VideoMamba models (videomamba_*_patch16_224) use the Vim recipe.

examples:
  rmeeto retrain --model vim_small_patch16_224 --checkpoint vim_s_midclstok_80p5acc.pth \\
      --data /data/imagenet --preset paper --epochs 3 --out runs/vim_s_r11
  torchrun --nproc_per_node 8 -m rmeeto retrain ...same flags...
  rmeeto retrain --out runs/vim_s_r11 --resume auto          # continue it, with the settings it stored
  rmeeto retrain --model vim_digits_patch4_32 --from-scratch --alpha 0 --epochs 10 --out runs/digits_teacher
  torchrun --nproc_per_node 4 -m rmeeto retrain --model videomamba_small_patch16_224_f8 \\
      --checkpoint videomamba_s16_k400_f8_res224.pth --data /data/k400 --preset paper --out runs/vm_s_r88
"""


# flag dest -> TrainConfig field; a value of None means "not given" (keep the preset's or the default)
TRAIN_FLAGS = (
    "data", "classes", "num_classes", "data_fraction", "data_seed", "data_subset", "subset_val",
    "checkpoint", "teacher", "use_ema_weights", "epochs", "batch_size", "accum_steps", "lr", "min_lr",
    "warmup_epochs", "warmup_lr", "weight_decay", "wd_exempt", "clip_grad", "layer_decay", "drop_path", "alpha",
    "smoothing",
    "train_aug", "auto_augment", "reprob", "mixup", "cutmix", "mixup_prob", "mixup_switch_prob", "mixup_mode",
    "repeated_aug", "ema", "ema_decay", "amp", "device", "seed", "workers", "eval_batch_size", "out",
    "save_every_steps", "tensorboard", "progress", "cuda_graphs", "max_bad_fraction", "ddp_graphs", "pipeline",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from rmeeto.gpu_data import PIPELINES
    from rmeeto.train import AMP_CHOICES, MIXUP_MODES

    parser.set_defaults(_parser=parser)  # so run() can reject bad combinations with parser.error
    parser.add_argument("--paper-differences", action="store_true",
                        help="list where --preset paper deliberately differs from the release, and exit")
    g = parser.add_argument_group("model and data")
    g.add_argument("--model", help="registered model name (see 'rmeeto models')")
    g.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="initial weights of the student and the teacher (.pth or .safetensors; read weights-only)")
    g.add_argument("--from-scratch", action="store_true",
                   help="no --checkpoint: random initial weights (needs --alpha 0: there is no teacher)")
    g.add_argument("--teacher", default=None, metavar="PATH", help="teacher weights (default: --checkpoint)")
    g.add_argument("--use-ema-weights", action="store_const", const=True, default=None,
                   help="load the checkpoint's model_ema entry (the official Vim-B file)")
    g.add_argument("--data", default=None, metavar="DIR",
                   help="'digits' (embedded, default) or an image folder with train/ and val/ class folders; "
                        "video models: a clip folder with train.csv and val.csv")
    g.add_argument("--classes", type=class_list_file, default=None, metavar="FILE",
                   help="class names, one a line, that number the labels of every split (default: the train "
                        "folder's class folders, sorted); a class folder not listed is an error")
    g.add_argument("--num-classes", type=positive_int, default=None, metavar="N",
                   help="build a new N-way head (e.g. more data classes than the checkpoint's head; the "
                        "checkpoint's head is then not loaded)")
    g.add_argument("--data-fraction", type=positive_unit_float, default=None, metavar="F",
                   help="re-train on a deterministic fraction F of the training split (default 1 = all of it)")
    g.add_argument("--data-seed", type=seed_int, default=None, metavar="S", help="seed of that subset (default 0)")
    g.add_argument("--data-subset", choices=SUBSET_MODES, default=None,
                   help="balanced (default: the same fraction of every class, at least one image each) or "
                        "uniform (a plain random sample, as the release)")
    g.add_argument("--subset-val", action="store_const", const=True, default=None,
                   help="also subset the validation split (the release does; off by default)")
    add_merge_arguments(parser)

    g = parser.add_argument_group("optimisation")
    g.add_argument("--epochs", type=positive_int, default=None)
    g.add_argument("-b", "--batch-size", type=positive_int, default=None, help="per process (default 128)")
    g.add_argument("--accum-steps", type=positive_int, default=None,
                   help="micro-batches per optimizer step (real gradient accumulation; default 1)")
    g.add_argument("--lr", type=nonneg_float, default=None,
                   help="base lr per 512 images, scaled by the global batch (default 2e-5)")
    g.add_argument("--min-lr", type=nonneg_float, default=None, help="cosine floor, not scaled (default 1e-6)")
    g.add_argument("--warmup-epochs", type=nonneg_float, default=None, help="linear warmup (default 0)")
    g.add_argument("--warmup-lr", type=nonneg_float, default=None)
    g.add_argument("--weight-decay", "--wd", dest="weight_decay", type=nonneg_float, default=None,
                   help="AdamW weight decay (default 0.05)")
    g.add_argument("--wd-exempt", dest="wd_exempt", action=argparse.BooleanOptionalAction, default=None,
                   help="exempt norms, biases, A_log, D, pos_embed and cls_token from weight decay "
                        "(default on; off under --preset paper, as in the release)")
    g.add_argument("--no-decay-exempt", dest="wd_exempt", action="store_const", const=False,
                   help="alias of --no-wd-exempt")
    g.add_argument("--clip-grad", type=positive_float, default=None, metavar="NORM", help="max grad norm (default off)")
    g.add_argument("--layer-decay", type=unit_float, default=None, metavar="D",
                   help="scale the lr of cls_token, pos_embed and patch_embed by D ** (depth + 1), as the "
                        "official video recipe in effect does (default off; 0.75 under the video --preset "
                        "paper; 1 = no scaling)")
    g.add_argument("--drop-path", type=unit_float_below_one, default=None, help="student stochastic depth (default 0.1)")
    g.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                   help="keep an EMA of the weights, evaluated and used for best.pth")
    g.add_argument("--ema-decay", type=open_unit_float, default=None)

    g = parser.add_argument_group("loss and augmentation")
    g.add_argument("--alpha", type=finite_float, default=None,
                   help="weight of KL(teacher || student) (default 0.5; 0 = no teacher)")
    g.add_argument("--smoothing", type=unit_float_below_one, default=None, help="label smoothing (default 0.1)")
    g.add_argument("--train-aug", action=argparse.BooleanOptionalAction, default=None,
                   help="random resized crop + flip for training images (default on)")
    g.add_argument("--auto-augment", "--aa", dest="auto_augment", type=auto_augment_policy, default=None,
                   help="timm auto-augment policy, e.g. rand-m9-mstd0.5-inc1 ('none' = off)")
    g.add_argument("--reprob", type=unit_float, default=None, help="random erasing probability")
    g.add_argument("--mixup", type=nonneg_float, default=None, help="mixup alpha (0 = off)")
    g.add_argument("--cutmix", type=nonneg_float, default=None, help="cutmix alpha (0 = off)")
    g.add_argument("--mixup-prob", type=unit_float, default=None)
    g.add_argument("--mixup-switch-prob", type=unit_float, default=None)
    g.add_argument("--mixup-mode", choices=MIXUP_MODES, default=None)
    g.add_argument("--max-bad-fraction", type=unit_float, default=None, metavar="F",
                   help="stop with an error when more than this fraction of the training images is unreadable "
                        "(default 0.2; an epoch with no readable image always stops)")
    g.add_argument("--repeated-aug", type=positive_int, default=None,
                   help="repeats of each image per epoch (repeated augmentation; 1 = off, paper 3); video "
                        "models: clips per video in the same batch (video paper 2)")

    g = parser.add_argument_group("runtime")
    g.add_argument("--amp", choices=AMP_CHOICES, default=None,
                   help="precision: auto = bf16 on CUDA, fp32 on CPU; fp16 uses a GradScaler (CUDA only)")
    g.add_argument("--device", type=device_name, default=None, help="auto (default), cpu, cuda")
    g.add_argument("--seed", type=seed_int, default=None)
    g.add_argument("-j", "--workers", type=worker_count, default=None, help="data loader workers per process")
    g.add_argument("--eval-batch-size", type=positive_int, default=None)
    g.add_argument("--out", default=None, metavar="DIR",
                   help="output folder for last.pth, best.pth, log.jsonl (default: write nothing)")
    g.add_argument("--resume", default=None, metavar="auto|PATH",
                   help="continue a run with the settings it stored (--model and the rest may be left out; only "
                        "runtime flags apply: --out, --device, -j, --save-every-steps, --tensorboard, progress, "
                        "graphs, pipeline): 'auto' = DIR/last.pth of --out if it exists (else start afresh from "
                        "the flags), or a checkpoint path (with --out: where the run goes on)")
    g.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out folder that holds a run (its last.pth, best.pth and log.jsonl are "
                        "replaced); without it such a folder is refused unless resuming")
    g.add_argument("--save-every-steps", type=nonneg_int, default=None, metavar="N",
                   help="also write last.pth every N optimizer steps (default 0 = only at epoch ends)")
    g.add_argument("--tensorboard", action="store_const", const=True, default=None,
                   help="write TensorBoard scalars to DIR/tensorboard (needs the tensorboard package)")
    g.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_const", const=False, default=None,
                   help="run the student and teacher eagerly (default on CUDA: replay them from CUDA graphs)")
    g.add_argument("--ddp-graphs", dest="ddp_graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="under DDP on CUDA, also replay the student's forward+backward from CUDA graphs (the "
                        "gradient all-reduce runs after the graphed backward); default on (--no-ddp-graphs: eager DDP)")
    g.add_argument("--pipeline", choices=PIPELINES, default=None,
                   help="input pipeline: auto (default) = gpu for an image folder on a CUDA device when fewer than 4 "
                        "loader workers (-j) per GPU are available (nvJPEG decode and batched augmentation on the "
                        "GPU; workers only read files), cpu otherwise (measured faster where the cores exist); cpu = "
                        "PIL in the loader workers; gpu on a CPU device runs the batched pipeline on the CPU")
    g.add_argument("--no-progress", dest="progress", action="store_const", const=False, default=None,
                   help="no progress bars (epoch lines are still printed)")


def config_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None):
    """Build the :class:`~rmeeto.train.TrainConfig` the flags describe. Invalid combinations end in
    ``parser.error`` (exit 2) when a parser is given, else :class:`CLIError`."""
    from rmeeto.train import TrainConfig

    def fail(msg: str):
        if parser is not None:
            parser.error(msg)
        raise CLIError(msg)

    if args.resume == "auto" and not args.out:
        fail("--resume auto looks for last.pth in --out: give --out")
    if args.resume is not None and not args.out:  # a resumed run that saved nothing would lose its training
        fail(f"--resume {args.resume} continues a run: give --out (its own folder, "
             f"{Path(args.resume).parent}, to continue it in place)")
    if args.resume is not None:
        stored = _stored_run(args, fail)
        if stored is not None:
            return _resumed_config(args, *stored)
    if not args.model:
        fail("--model is required" + (f" (--out {args.out} holds no last.pth to resume)"
                                      if args.resume == "auto" else ""))
    if args.checkpoint and args.from_scratch:
        fail("--checkpoint and --from-scratch are exclusive")
    if not args.checkpoint and not args.from_scratch and args.resume is None:
        fail("give --checkpoint PATH (weights to re-train) or --from-scratch")
    if args.alpha is not None and not args.alpha >= 0:
        fail(f"--alpha must be >= 0, got {args.alpha}")
    if args.from_scratch and (args.alpha or 0) > 0 and not args.teacher:
        fail("--from-scratch has no teacher to distil from: add --alpha 0 (or --teacher PATH)")
    if args.from_scratch and args.alpha is None and not args.teacher:
        args.alpha = 0.0  # training from scratch: nothing to distil from
    if args.amp == "fp16":
        import torch

        device = args.device or "auto"
        if device.startswith("cpu") or (device == "auto" and not torch.cuda.is_available()):
            fail("--amp fp16 needs CUDA; use --amp bf16 or fp32 on CPU")
    if args.clip_grad is not None and args.clip_grad <= 0:
        fail(f"--clip-grad must be > 0, got {args.clip_grad}")

    try:
        from rmeeto.models import get_config

        get_config(args.model)
    except ValueError as exc:
        fail(str(exc))
    merge = merge_config_from_args(args, args.model)
    given = {name: getattr(args, name) for name in TRAIN_FLAGS if getattr(args, name, None) is not None}
    if merge is not None:
        given["merge"] = merge
    try:
        if args.preset == "paper":
            return TrainConfig.paper(args.model, **given)
        return TrainConfig(model=args.model, **given)
    except ValueError as exc:
        fail(str(exc))


def _stored_run(args: argparse.Namespace, fail):
    """For a resume: (the settings the resume checkpoint stores, its path), or None where ``--resume auto`` finds
    no last.pth in --out (the run then starts afresh from the flags)."""
    from rmeeto.train import TrainError
    from rmeeto.train.state import find_resume_checkpoint, read_resume, stored_config

    try:
        path = find_resume_checkpoint(args.resume, args.out)
        return None if path is None else (stored_config(read_resume(path), path), path)
    except TrainError as exc:
        fail(str(exc))


def _resumed_config(args: argparse.Namespace, stored: TrainConfig, path: Path) -> TrainConfig:
    """A resumed run's settings: those ``stored`` in its checkpoint, with this call's runtime fields
    (:data:`~rmeeto.train.config.RUNTIME_FIELDS`: its flags, else the defaults), as ``train`` resumes any run.
    Other flags cannot change a run halfway: those given with another value are named as ignored."""
    import dataclasses

    from rmeeto.train import TrainConfig
    from rmeeto.train.config import RUNTIME_FIELDS

    given = {name: getattr(args, name) for name in TRAIN_FLAGS if getattr(args, name, None) is not None}
    ignored = [name for name, value in given.items() if name not in RUNTIME_FIELDS
               and (tuple(value) if isinstance(value, list) else value) != getattr(stored, name)]
    if args.model and args.model != stored.model:
        ignored.insert(0, "model")
    if (args.preset or "none") != "none" or any(getattr(args, dest, None) is not None for dest in MERGE_FLAG_DESTS):
        try:
            merge = merge_config_from_args(args, stored.model)
        except CLIError:
            merge = stored.merge  # (a merge flag that does not fit the stored model is ignored as well)
            ignored.append("merge")
        if merge != stored.merge and "merge" not in ignored:
            ignored.append("merge")
    if ignored and os.environ.get("RANK", "0") == "0":  # (under torchrun every rank reads it: one line)
        print(f"resume: using the settings stored in {path} (ignoring new values of {', '.join(ignored)})",
              file=sys.stderr)
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name in RUNTIME_FIELDS}
    return dataclasses.replace(stored, **{**defaults, **{k: v for k, v in given.items() if k in RUNTIME_FIELDS}})


def run(args: argparse.Namespace) -> int:
    from rmeeto.train import PAPER_DEVIATIONS, train

    if args.paper_differences:
        for what, why in PAPER_DEVIATIONS.items():
            print(f"{what}: {why}")
        return 0
    config = config_from_args(args, getattr(args, "_parser", None))
    with training_errors():
        result = train(config, resume=args.resume, overwrite=getattr(args, "overwrite", False))
    if result.status == "interrupted":
        return 128 + (result.signal or 2)  # the shell's convention for "killed by this signal"
    return 0

"""``rmeeto ablate``: merge vs prune, ordered vs unordered, token shuffling, for one model or a Vim and a ViT."""

from __future__ import annotations

import argparse
import math

from rmeeto.cli import CLIError, training_errors
from rmeeto.argtypes import nonneg_int, positive_int, seed_int, worker_count
from rmeeto.cli.eval import AMP_CHOICES, check_model, check_paths, num_classes_for, resolve_device, user_errors

HELP = "order ablations (merge/prune, ordered/unordered, shuffle rates) with CSV + figure, resumable per cell"
DESCRIPTION = """\
Run the paper's "why order matters" ablations on one MODEL, or on two side by side (a Vim and a ViT/DeiT):
the unmerged model, merge and prune in the ordered and the unordered layout, and the ordered merge after
shuffling 0 / 0.1 / 0.3 / 0.5 / 0.7 of the tokens at every merging layer (shuffled in evaluation too), all with
the model's paper merge count unless --num-merged says otherwise. Every setting is scored training-free; with
--retrain-epochs N each merged setting is also re-trained N epochs with distillation from the unmerged model
(needs --checkpoint) and scored again.

Writes OUT/ablate.csv (one row per cell, written as each finishes, with top1_drop = change against the unmerged
model) and OUT/ablate.png (the drops per setting, one panel per model). A cell already in the CSV for the same
model, setting, training, checkpoint (path and contents), data (path and the evaluation split's files: names,
sizes, modification times), limit, tokens merged, shuffle seed and re-training lr and batch is not recomputed: re-running after an interruption finishes only what is missing (random weights are another model
on every run: never reused). Re-trained cells train in OUT/retrain/MODEL_SETTING_<digest of those settings>/.

--checkpoint takes one path per model, in order ('none' for random weights).

examples:
  rmeeto ablate vim_digits_patch4_32 vit_digits_patch4_32 --checkpoint vim/best.pth vit/best.pth
  rmeeto ablate vim_small_patch16_224 deit_small_patch16_224 --data /data/imagenet --limit 10000 \\
      --checkpoint vim_s_midclstok_80p5acc.pth deit_small_patch16_224-cd65a155.pth --amp bf16 --out out/order
  rmeeto ablate deit_small_patch16_224 --checkpoint deit_s.pth --data /data/imagenet --retrain-epochs 3
"""


def _rates(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions, got {text!r}") from None
    if not values or any(not 0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected fractions in [0, 1], got {text!r}")
    return tuple(dict.fromkeys(values))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", metavar="MODEL", nargs="+", help="one or two registered model names")
    parser.add_argument("--checkpoint", nargs="+", default=None, metavar="PATH",
                        help="weights per model, in the order of MODEL ('none' = random weights)")
    parser.add_argument("--data", default="digits", metavar="digits|PATH",
                        help="'digits' (embedded, default) or an image folder DIR[/val]/<class>/<image>")
    parser.add_argument("--limit", type=positive_int, default=None, metavar="N",
                        help="score only N images, spread evenly over the set")
    parser.add_argument("--num-merged", "-r", dest="num_merged", type=positive_int, default=None, metavar="N",
                        help="tokens merged per merging layer (default: each model's paper preset)")
    parser.add_argument("--shuffle-rates", type=_rates, default=(0.0, 0.1, 0.3, 0.5, 0.7), metavar="F,F,...",
                        help="shuffle fractions (default 0,0.1,0.3,0.5,0.7)")
    parser.add_argument("--shuffle-seed", type=seed_int, default=0, metavar="S", help="shuffle seed (default 0)")
    parser.add_argument("--only", type=lambda t: tuple(s.strip() for s in t.split(",") if s.strip()), default=None,
                        metavar="NAME,NAME,...",
                        help="run just these settings, e.g. 'merge ordered,shuffle 0.5' (unmerged always runs)")
    parser.add_argument("--retrain-epochs", type=nonneg_int, default=0, metavar="N",
                        help="also re-train every merged setting N epochs with distillation (default 0: off)")
    parser.add_argument("--retrain-lr", type=float, default=2e-5, metavar="LR",
                        help="re-training base lr per 512 images (default 2e-5)")
    parser.add_argument("--retrain-batch-size", type=positive_int, default=128, metavar="N")
    parser.add_argument("--batch-size", type=positive_int, default=64, metavar="N",
                        help="evaluation batch size (default 64)")
    parser.add_argument("--workers", type=worker_count, default=2, metavar="N", help="data-loading processes")
    parser.add_argument("--device", default="auto", help="auto (cuda if available, default), cpu, cuda or cuda:N")
    parser.add_argument("--amp", choices=AMP_CHOICES, default="none", help="autocast dtype (default none)")
    parser.add_argument("--out", default="out/ablate", metavar="DIR", help="output folder (default out/ablate)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from rmeeto.ablate import AblationSettings, run_ablation
    from rmeeto.evaluate import build_eval_dataset

    if len(args.models) > 2:
        raise CLIError(f"give one or two models, got {len(args.models)}: {' '.join(args.models)}")
    cfgs = [check_model(name) for name in args.models]
    checkpoints = [None if c.lower() == "none" else c for c in (args.checkpoint or ["none"] * len(args.models))]
    if len(checkpoints) != len(args.models):
        raise CLIError(f"--checkpoint needs one path per model ({len(args.models)}), got {len(checkpoints)}")
    for c in checkpoints:
        check_paths(c)
    check_paths(None, args.data)
    if args.retrain_epochs and None in checkpoints:
        raise CLIError("--retrain-epochs distils from the unmerged model: give a --checkpoint for every model")
    device = resolve_device(args.device)
    if args.amp != "none" and device.type != "cuda" and args.amp != "bf16":
        raise CLIError(f"--amp {args.amp} needs a CUDA device; use --amp bf16 or none on CPU")
    with user_errors():
        classes = [len(build_eval_dataset(args.data, name, 1)[1]) for name in args.models]
        settings = AblationSettings(
            num_merged=args.num_merged, shuffle_rates=args.shuffle_rates, shuffle_seed=args.shuffle_seed,
            retrain_epochs=args.retrain_epochs, retrain_lr=args.retrain_lr,
            retrain_batch_size=args.retrain_batch_size, batch_size=args.batch_size, workers=args.workers,
            device=str(device), amp=None if args.amp == "none" else args.amp, limit=args.limit, only=args.only,
        )
    num_classes = [num_classes_for(name, cfg, ckpt, n, args.data)
                   for name, cfg, ckpt, n in zip(args.models, cfgs, checkpoints, classes)]
    # (a re-training cell that diverges, --retrain-lr too high, fails the command; the finished rows stay)
    with training_errors(), user_errors():
        rows = run_ablation(args.models, args.data, checkpoints, args.out, settings,
                            progress=not args.no_progress, num_classes=num_classes)
    print(f"{'model':<24} {'setting':<18} {'training':<16} {'tokens':>6} {'GFLOPs':>9} {'top-1':>7} {'change':>7}")
    for r in rows:
        drop = "" if math.isnan(r["top1_drop"]) else f"{r['top1_drop']:+7.2f}"
        print(f"{r['model']:<24} {r['setting']:<18} {r['training']:<16} {r['tokens']:>6} {r['gflops']:>9.4g} "
              f"{r['top1']:>7.2f} {drop:>7}")
    print(f"wrote {args.out}/ablate.csv")
    print(f"wrote {args.out}/ablate.png")
    return 0

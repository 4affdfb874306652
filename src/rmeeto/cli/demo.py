"""``rmeeto demo``: the whole R-MeeTo story on the embedded digits set, in a few CPU minutes."""

from __future__ import annotations

import argparse

from rmeeto.cli._types import positive_int

HELP = "end-to-end demo on the embedded digits: train, merge, prune, re-train, report"
DESCRIPTION = """\
Train a small Vim (vim_digits_patch4_32) from scratch on the embedded digits, evaluate it, merge tokens
without training (and prune the same tokens for contrast), re-train the merged model for a few epochs with
distillation from the unmerged teacher, and write report.md, report.json, demo.png and the checkpoints into
--out. Then the order section: a ViT of the same size (vit_digits_patch4_32) trained the same way, and both
models scored with the ordered and unordered merge, pruning and token shuffling (order/ablate.csv and .png),
with a finding on whether order matters more for the Vim (--no-order skips it). About 7 minutes on 2 CPU
cores; --quick (one epoch each, ~3 minutes) is a smoke test.

examples:
  rmeeto demo
  rmeeto demo --out /tmp/demo --quick
  rmeeto demo -r 6 --retrain-epochs 5
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="out/demo", metavar="DIR", help="output folder (default out/demo)")
    parser.add_argument("--quick", action="store_true", help="1 epoch each: a smoke test, not a result")
    parser.add_argument("-r", "--num-merged", type=positive_int, default=None, metavar="N",
                        help="tokens merged at each even layer (default 8: 65 -> 25 tokens)")
    parser.add_argument("--teacher-epochs", type=positive_int, default=None)
    parser.add_argument("--retrain-epochs", type=positive_int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--vit-epochs", type=positive_int, default=None,
                        help="epochs of the order section's ViT (default 15; --quick: 1)")
    parser.add_argument("--no-order", dest="order", action="store_false",
                        help="skip the order section (ViT vs Vim: unordered merge, pruning, token shuffling)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from rmeeto.demo import DemoSettings, format_table, run_demo

    given = {k: getattr(args, k) for k in ("num_merged", "teacher_epochs", "retrain_epochs", "seed", "vit_epochs")
             if getattr(args, k) is not None}
    given["order"] = args.order
    settings = DemoSettings.quick(**given) if args.quick else DemoSettings(**given)
    report = run_demo(args.out, settings, progress=args.progress)
    print(format_table(report))
    print(f"report: {args.out}/report.md ({report['wall_seconds']:.0f} s)")
    return 0

"""``rmeeto demo``: the whole R-MeeTo story on the embedded digits set, in a few CPU minutes."""

from __future__ import annotations

import argparse

from rmeeto.cli._types import positive_int

HELP = "end-to-end demo on the embedded digits: train, merge, prune, re-train, report"
DESCRIPTION = """\
Train a small Vim (vim_digits_patch4_32) from scratch on the embedded digits, evaluate it, merge tokens
without training (and prune the same tokens for contrast), re-train the merged model for a few epochs with
distillation from the unmerged teacher, and write report.md, report.json, demo.png and the checkpoints into
--out. About 5 minutes on 2 CPU cores; --quick (one epoch each, ~2 minutes) is a smoke test.

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
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from rmeeto.demo import DemoSettings, format_table, run_demo

    given = {k: getattr(args, k) for k in ("num_merged", "teacher_epochs", "retrain_epochs", "seed")
             if getattr(args, k) is not None}
    settings = DemoSettings.quick(**given) if args.quick else DemoSettings(**given)
    report = run_demo(args.out, settings, progress=args.progress)
    print(format_table(report))
    print(f"report: {args.out}/report.md ({report['wall_seconds']:.0f} s)")
    return 0

"""``rmeeto demo``: the whole R-MeeTo story in a few CPU minutes, on the embedded digits or on synthetic video."""

from __future__ import annotations

import argparse
from pathlib import Path

from rmeeto.argtypes import positive_int, seed_int
from rmeeto.cli import CLIError

HELP = "end-to-end demo (digits images or synthetic video): train, merge, prune, re-train, report"
DESCRIPTION = """\
--task image (default): train a small Vim (vim_digits_patch4_32) from scratch on the embedded digits, evaluate
it, merge tokens without training (and prune the same tokens for contrast), re-train the merged model for a few
epochs with distillation from the unmerged teacher, and write report.md, report.json, demo.png and the
checkpoints into --out (default out/demo). Then the order section: a ViT of the same size (vit_digits_patch4_32)
trained the same way, and both models scored with the ordered and unordered merge, pruning and token shuffling
(order/ablate.csv and .png), with a finding on whether order matters more for the Vim (--no-order skips it).
About 7 minutes on 2 CPU cores.

--task video: the same story for VideoMamba on synthetic clips encoded with PyAV (a square moving right, left,
down or up: the direction is the label, so frame order matters): a tiny videomamba_demo_patch4_16_f8 (8 frames
in tubelets of 2, 65 space-time tokens) trained from scratch, merged over the flattened space-time tokens, pruned,
re-trained with distillation; report in --out (default out/demo_video), clips in its data/ folder. A few minutes
on 2 CPU cores.

--quick (one epoch each, little data) is a smoke test whose numbers mean nothing.

examples:
  rmeeto demo
  rmeeto demo --task video
  rmeeto demo --out /tmp/demo --quick
  rmeeto demo -r 6 --retrain-epochs 5
"""

DEFAULT_OUT = {"image": "out/demo", "video": "out/demo_video"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", choices=tuple(DEFAULT_OUT), default="image",
                        help="image (digits, default) or video (synthetic clips)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output folder (default out/demo, or out/demo_video for --task video)")
    parser.add_argument("--quick", action="store_true", help="1 epoch each: a smoke test, not a result")
    parser.add_argument("-r", "--num-merged", type=positive_int, default=None, metavar="N",
                        help="tokens merged at each even layer (default 8 for image: 65 -> 25 tokens; "
                             "16 for video: 65 -> 49)")
    parser.add_argument("--teacher-epochs", type=positive_int, default=None)
    parser.add_argument("--retrain-epochs", type=positive_int, default=None)
    parser.add_argument("--seed", type=seed_int, default=None)
    parser.add_argument("--vit-epochs", type=positive_int, default=None,
                        help="epochs of the order section's ViT (default 15; --quick: 1)")
    parser.add_argument("--no-order", dest="order", action="store_false",
                        help="skip the order section (ViT vs Vim: unordered merge, pruning, token shuffling)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into an --out that holds files a demo did not make (a re-run of a demo's "
                             "own folder replaces it without this)")


# what a demo writes into its folder: a re-run may replace these; anything else there is someone else's
_DEMO_ENTRIES = frozenset({"teacher", "retrain", "order", "data", "report.md", "report.json", "demo.png",
                           "demo_video.png"})


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse an --out that is a file, or a folder holding what no demo wrote (a training run's checkpoints, say):
    the demo replaces its teacher/ and retrain/ runs on every start."""
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file, not a folder; choose another path")
    if overwrite or not out.is_dir():
        return
    foreign = sorted(p.name for p in out.iterdir() if p.name not in _DEMO_ENTRIES)
    if foreign:
        raise CLIError(f"--out {out} holds files no demo wrote ({', '.join(foreign[:3])}"
                       f"{', ...' if len(foreign) > 3 else ''}); choose another folder or pass --overwrite")


def run(args: argparse.Namespace) -> int:
    from rmeeto.demo import format_table

    given = {k: getattr(args, k) for k in ("num_merged", "teacher_epochs", "retrain_epochs", "seed", "vit_epochs")
             if getattr(args, k) is not None}
    out = args.out or DEFAULT_OUT[args.task]
    _check_out(Path(out), args.overwrite)
    if args.task == "video":
        from rmeeto.demo_video import VideoDemoSettings, run_video_demo

        given.pop("vit_epochs", None)  # the order section belongs to the image demo
        settings = VideoDemoSettings.quick(**given) if args.quick else VideoDemoSettings(**given)
        report = run_video_demo(out, settings, progress=args.progress)
    else:
        from rmeeto.demo import DemoSettings, run_demo

        given["order"] = args.order
        settings = DemoSettings.quick(**given) if args.quick else DemoSettings(**given)
        report = run_demo(out, settings, progress=args.progress)
    print(format_table(report))
    print(f"report: {out}/report.md ({report['wall_seconds']:.0f} s)")
    return 0

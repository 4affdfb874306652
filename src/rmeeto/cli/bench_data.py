"""``rmeeto bench-data DIR`` (also ``rmeeto bench --data DIR``): images/s of the input pipeline alone."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rmeeto.cli import CLIError

HELP = "images/s of the input pipeline alone (CPU workers at 1..N vs the GPU pipeline) over a JPEG folder"
DESCRIPTION = """\
Time the training input pipeline without a model: the CPU path (PIL decode + the paper's augmentation in
DataLoader workers) at each worker count, and the GPU path (workers read bytes; nvJPEG decode and batched
augmentation on the device) when CUDA is available. Compare with 'rmeeto bench MODEL --train' to see whether
data or the model is the bottleneck. Make a test folder with 'python -m rmeeto.bench_data make-jpegs OUT'.

examples:
  rmeeto bench --data /data/imagenet/train --workers 1,2,4,8,16
  python -m rmeeto.bench_data make-jpegs /tmp/jpegs --images 12800 --classes 100
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from rmeeto.bench_data import add_run_arguments

    parser.add_argument("folder", metavar="DIR", help="image folder DIR/<class>/<image>")
    add_run_arguments(parser)
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")


def run(args: argparse.Namespace) -> int:
    from rmeeto.bench_data import format_rows, run_from_args
    from rmeeto.cli.eval import check_output_file, write_file_atomic

    if args.json:
        check_output_file(args.json, "--json")
    try:
        rows = run_from_args(args)
    except ValueError as exc:
        raise CLIError(str(exc).splitlines()[0]) from None
    print(format_rows(rows))
    if args.json:
        write_file_atomic(Path(args.json), json.dumps(rows, indent=2) + "\n", "--json")
        print(f"wrote {args.json}")
    return 0

"""Command-line interface: ``rmeeto <command> ...`` (also ``python -m rmeeto``).

The CLI is thin: each command lives in its own module ``rmeeto.cli.<name>`` exposing
``HELP`` (one line), ``DESCRIPTION`` (the ``--help`` text, with examples), ``add_arguments(parser)``
and ``run(args) -> int``. Everything a command does is available from Python too.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from typing import Sequence

# Order here is the order shown by ``rmeeto --help``.
COMMANDS: tuple[str, ...] = (
    "models", "info", "flops", "bench", "bench-data", "eval", "sweep", "ablate", "visualize", "retrain", "export",
    "demo",
)


class CLIError(Exception):
    """A user-facing error: printed as one line ``rmeeto: error: ...`` and exit code 2."""


class RunFailed(Exception):
    """A run that failed on its own, not on the user's input (a loss that diverged): one line, exit code 1."""


@contextlib.contextmanager
def training_errors():
    """The training loop's errors as the commands report them: a setup problem (``TrainError``: a bad path, an
    unusable checkpoint) is a :class:`CLIError`, a loss that became NaN/inf (``NonFiniteLossError``, what was
    finished stays written) a :class:`RunFailed`."""
    from rmeeto.train import NonFiniteLossError, TrainError

    try:
        yield
    except TrainError as exc:
        raise CLIError(str(exc)) from None
    except NonFiniteLossError as exc:
        raise RunFailed(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rmeeto",
        description="Faster Vision Mamba: token merging + short re-training (R-MeeTo).",
        epilog="Run 'rmeeto <command> --help' for the options and examples of each command.",
    )
    from rmeeto import __version__

    parser.add_argument("--version", action="version", version=f"rmeeto {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name in COMMANDS:
        module = importlib.import_module(f"rmeeto.cli.{name.replace('-', '_')}")
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=module.DESCRIPTION,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except CLIError as exc:
        print(f"rmeeto {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except RunFailed as exc:
        print(f"rmeeto {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"rmeeto {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a path that cannot be read or written (missing folder, read-only, a file in the way)
        where = f": {exc.filename}" if exc.filename else ""
        print(f"rmeeto {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1


def _in_torchrun_job() -> bool:
    """Whether this process is one of several that ``torchrun`` started (it sets WORLD_SIZE)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def _exit_skipping_finalization(code: int) -> None:
    """End the process with ``code`` after flushing what Python buffers (the standard streams, logging's
    handlers), without the interpreter's finalization. In a ``torchrun`` job a rank that had finished its work and
    ended its process group could still abort in finalization ("terminate called without an active exception",
    SIGABRT: thread teardown in PyTorch's distributed backend, seen on CPU / gloo in sessions 36 and 40), so
    torchrun reported a finished run as failed. Every file the commands write is closed before they return."""
    import logging

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    logging.shutdown()
    os._exit(code)


def entry() -> None:  # console-script entry point
    code = main()
    if _in_torchrun_job():
        _exit_skipping_finalization(code)
    sys.exit(code)

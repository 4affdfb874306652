"""Any ``rmeeto`` command (``bench`` above all) with ``MATCH_CONFIG`` entries set first: whole-model A/Bs of the
matching's settings, one process per setting, where a session script used to override an entry in a ``python -c``.

    PYTHONPATH=src python3 benchmarks/bench_set.py --set prefetch=True [--set compact_max_r=32] -- \\
        bench vim_small_patch16_224 --preset paper --modes cudagraph --rounds 2
"""

from __future__ import annotations

import argparse
import sys

from _match_set import add_set_argument, set_match_config
from rmeeto.cli import main as cli_main
from rmeeto.ops.triton import merge as mt


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        argv.append("--")
    split = argv.index("--")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_set_argument(ap)
    a = ap.parse_args(argv[:split])
    set_match_config(a.set, ap.error)
    print("MATCH_CONFIG:", {k: mt.MATCH_CONFIG[k] for k in (item.split("=", 1)[0] for item in a.set)}, flush=True)
    return cli_main(argv[split + 1:])


if __name__ == "__main__":
    sys.exit(main())

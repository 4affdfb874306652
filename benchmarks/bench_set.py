"""Any ``rmeeto`` command (``bench`` above all) with kernel settings set first (``MATCH_CONFIG`` entries, or a
kernel module's constants as ``module.NAME``: see ``_match_set``): whole-model A/Bs of those settings, one process
per setting, where a session script used to override one in a ``python -c``.

    PYTHONPATH=src python3 benchmarks/bench_set.py --set prefetch=True [--set compact_max_r=32] -- \\
        bench vim_small_patch16_224 --preset paper --modes cudagraph --rounds 2
    PYTHONPATH=src python3 benchmarks/bench_set.py --set inproj.WIDE_MAX_ROWS=0 -- bench vim_small_patch16_224 ...
"""

from __future__ import annotations

import argparse
import sys

from _match_set import add_set_argument, set_match_config, split_command
from rmeeto.cli import main as cli_main


def main(argv=None) -> int:
    own, command = split_command(argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_set_argument(ap)
    a = ap.parse_args(own)
    set_match_config(a.set, ap.error)
    print("settings:", ", ".join(item for item in a.set), flush=True)
    return cli_main(command)


if __name__ == "__main__":
    sys.exit(main())

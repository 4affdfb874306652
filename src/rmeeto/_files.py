"""File helpers that depend on nothing else in the package (checkpoint saves and the CLI's writers use them)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

__all__ = ["replace_target"]


def replace_target(path) -> Path:
    """The file that writing ``path`` through a temporary file and ``os.replace`` should replace: ``path`` itself,
    or the file a symlink points at (the link stays a link). Raises OSError (one line through
    :func:`describe_os_error`) when that is not a regular file: a rename over a device node, a FIFO or a socket
    would replace it with a plain file (as root, ``--json /dev/null`` would have replaced /dev/null)."""
    path = Path(path)
    real = Path(os.path.realpath(path)) if path.is_symlink() else path
    if real.exists() and not real.is_file():
        kind = "a folder" if real.is_dir() else "not a regular file"
        raise OSError(errno.EEXIST, f"{kind}; give a path to a file", str(path))
    return real

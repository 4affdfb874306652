"""File helpers that depend on nothing else in the package (checkpoint saves and the CLI's writers use them)."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Union

__all__ = ["replace_target", "write_atomic"]


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


def _umask() -> int:
    try:  # read without changing it (os.umask would, briefly, for every thread)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path, content: Union[bytes, str, Callable[[BinaryIO], None]]) -> Path:
    """Write ``path`` whole or not at all; returns the file written (a symlink's target, see
    :func:`replace_target`).

    ``content``: bytes, text (UTF-8), or a function that writes into the binary file it is given. It goes to a
    temporary file in the same folder (created with its parents), is fsynced, gets a new file's usual permissions
    and is renamed over ``path``; the folder is fsynced so that the rename is durable. Any failure (disk full,
    read-only folder, an exception from ``content``, a signal) leaves the previous file untouched and no
    temporary file behind, and propagates."""
    path = replace_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path

"""File helpers that depend on nothing else in the package (checkpoint saves and the CLI's writers use them)."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Union

__all__ = ["replace_target", "atomic_path", "write_atomic"]


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


@contextlib.contextmanager
def atomic_path(path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (a regular file, see :func:`replace_target`) for a writer that
    takes a file name; when the block ends, the file is fsynced, given a new file's usual permissions and renamed
    over ``path``, and the folder is fsynced so that the rename is durable. Any failure in the block (disk full,
    an exception, a signal) leaves the previous file untouched and no temporary file behind, and propagates.
    ``suffix`` ends the temporary name (a writer may want the real one, ``.tmp.onnx``)."""
    path = replace_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
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


def write_atomic(path, content: Union[bytes, str, Callable[[BinaryIO], None]]) -> Path:
    """Write ``path`` whole or not at all (:func:`atomic_path`); returns the file written (a symlink's target,
    see :func:`replace_target`). ``content``: bytes, text (UTF-8), or a function that writes into the binary file
    it is given."""
    path = replace_target(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        if callable(content):
            content(f)
        else:
            f.write(content.encode() if isinstance(content, str) else content)
    return path

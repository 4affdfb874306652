"""The run folder: refuse to write over a run by accident, one writer at a time, fail early when it is unusable.

A folder that already holds a run (``last.pth``, ``best.pth`` or a non-empty ``log.jsonl``; a run that failed
before its first epoch ended leaves an empty log, or no folder at all when it made it) is refused unless the run is
resumed (``--resume auto``) or the caller asks to start afresh (``--overwrite``). Rank 0 holds ``out/.lock``
(``fcntl.flock``, with its pid inside) for the whole run, so a second run on the same folder is refused; the
kernel drops the lock when the process dies, so a killed run never leaves a stale one. Temporary files of
saves that were interrupted (``.last.pth.XXXX.tmp``) are removed when a run starts.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Optional

from rmeeto.train.config import TrainError

__all__ = ["RUN_FILES", "RunFolder", "describe_os_error"]

RUN_FILES = ("last.pth", "best.pth", "log.jsonl")  # what marks a folder as holding a run
LOCK_NAME = ".lock"
LOG_NAME = "log.jsonl"


def describe_os_error(exc: OSError, path) -> str:
    """One line for a failed write: disk full or not writable, naming ``path``."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full: {path}"
    return f"not writable: {path} ({exc.strerror or type(exc).__name__})"


class RunFolder:
    """``out`` checked and locked for this run (rank 0 only). ``release()`` drops the lock, and removes the
    folder again when this run created it and wrote nothing into it (bad input leaves no folder behind)."""

    def __init__(self, out: Path, *, resuming: bool, overwrite: bool):
        self.out = out
        self._fd: Optional[int] = None
        self._created = False
        if out.exists() and not out.is_dir():
            raise TrainError(f"--out {out} is a file, not a folder; choose another path")
        for parent in out.parents:
            if parent.exists() and not parent.is_dir():
                raise TrainError(f"--out {out} is below the file {parent}; choose another path")
        held = [name for name in RUN_FILES if _holds_run(out / name)]
        if held and not resuming and not overwrite:
            raise TrainError(f"--out {out} already holds a run ({', '.join(held)}); continue it with --resume auto, "
                             "or start afresh with --overwrite (replaces its files)")
        try:
            self._created = not out.exists()
            out.mkdir(parents=True, exist_ok=True)
            self._lock()
            probe = out / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            self.release()
            raise TrainError(f"--out {describe_os_error(exc, out)}") from None
        if overwrite and not resuming:
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
        self._clean_temp_files()

    def _lock(self) -> None:
        import fcntl

        fd = os.open(self.out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise TrainError(f"--out {self.out} is in use by another run (pid {owner}); wait for it to end or "
                             "choose another folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def _clean_temp_files(self) -> None:
        # save_checkpoint writes ".<name>.<random>.tmp" then renames it; a SIGKILL in between leaves one behind
        for tmp in self.out.glob(".*.pth.*.tmp"):
            tmp.unlink(missing_ok=True)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
        if not (self._created and self.out.is_dir()):
            return
        if all(p.name == LOCK_NAME or (p.name == LOG_NAME and not _holds_run(p)) for p in self.out.iterdir()):
            for name in (LOCK_NAME, LOG_NAME):
                (self.out / name).unlink(missing_ok=True)
            self.out.rmdir()


def _holds_run(path: Path) -> bool:
    """Whether ``path`` (one of RUN_FILES) records a run: an empty log.jsonl (a run that failed before its first
    epoch ended) records nothing and does not block the folder."""
    try:
        return path.stat().st_size > 0 or path.name != LOG_NAME
    except FileNotFoundError:
        return False

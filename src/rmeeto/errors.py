"""Error types shared across layers (kept in a module that imports nothing, so any layer can raise them)."""

from __future__ import annotations

__all__ = ["CheckpointError"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message is one line naming the file."""

"""``hf-hub:OWNER/REPO/PATH[@REVISION]`` checkpoint paths: parsing and fetching through ``huggingface_hub``.

The low layer of :mod:`rmeeto.hub`: it imports nothing from rmeeto but the error type, so the generic checkpoint
reader (:mod:`rmeeto.checkpoint`) can resolve hub paths wherever a local path is accepted.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional, Union

from rmeeto.errors import CheckpointError

__all__ = ["HF_HUB_PREFIX", "HubError", "is_hub_path", "parse_hub_path", "resolve"]

HF_HUB_PREFIX = "hf-hub:"


class HubError(CheckpointError):
    """A hub file that cannot be had (offline and not cached, no such repo/file/revision, HTTP failure), or an
    unknown pretrained tag. One line, naming the repo and file."""


_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def is_hub_path(path: Union[str, os.PathLike, None]) -> bool:
    return path is not None and os.fspath(path).startswith(HF_HUB_PREFIX)


def parse_hub_path(path: str) -> tuple[str, str, Optional[str]]:
    """``hf-hub:OWNER/REPO/PATH[@REVISION]`` -> (``OWNER/REPO``, ``PATH``, revision or None)."""
    body = path[len(HF_HUB_PREFIX):] if path.startswith(HF_HUB_PREFIX) else path
    revision = None
    if "@" in body:
        body, _, revision = body.rpartition("@")
        if not revision:
            raise HubError(f"{path}: empty revision after '@'")
    parts = body.split("/")
    if len(parts) < 3 or not all(parts) or not all(_REPO_PART.match(p) for p in parts[:2]):
        raise HubError(f"{path}: expected hf-hub:OWNER/REPO/PATH/TO/FILE[@REVISION]")
    return "/".join(parts[:2]), "/".join(parts[2:]), revision


def _offline() -> bool:
    # read at call time: huggingface_hub reads HF_HUB_OFFLINE once, at its import
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _hub_error(where: str, exc: BaseException) -> HubError:
    """A one-line :class:`HubError` for a failed ``hf_hub_download``."""
    from huggingface_hub import errors

    if isinstance(exc, errors.LocalEntryNotFoundError):
        if _offline():
            why = "offline (HF_HUB_OFFLINE=1) and not cached"
        else:
            why = "not cached and the hub cannot be reached (no network?)"
        cache = os.environ.get("HF_HUB_CACHE")
        return HubError(f"{where}: {why}{f' in {cache}' if cache else ''}")
    response = getattr(exc, "response", None)
    status = f"HTTP {response.status_code}: " if getattr(response, "status_code", None) else ""
    for kind, what in (
        (errors.GatedRepoError, "gated repository (accept its terms on huggingface.co and log in)"),
        (errors.RepositoryNotFoundError, "no such repository (or it is private)"),
        (errors.RevisionNotFoundError, "no such revision"),
        (errors.EntryNotFoundError, "no such file in the repository"),
    ):
        if isinstance(exc, kind):
            return HubError(f"{where}: {status}{what}")
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return HubError(f"{where}: {status}{type(exc).__name__}: {first[:160]}")


def resolve(path: Union[str, os.PathLike]) -> Path:
    """A local file for ``path``: ``hf-hub:OWNER/REPO/PATH[@REV]`` is fetched with ``hf_hub_download`` (standard
    cache, ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` read at call time); anything else is returned as a Path.

    Raises :class:`HubError` (a :class:`~rmeeto.checkpoint.CheckpointError`) with the repo, file and reason."""
    if not is_hub_path(path):
        return Path(path)
    repo, filename, revision = parse_hub_path(str(path))
    from huggingface_hub import hf_hub_download

    where = f"{repo}/{filename}" + (f"@{revision}" if revision else "")
    try:
        local = hf_hub_download(
            repo, filename, revision=revision, cache_dir=os.environ.get("HF_HUB_CACHE") or None,
            local_files_only=_offline(),
        )
    except Exception as exc:  # huggingface_hub raises many types (HTTP, OS, validation): all become one line
        raise _hub_error(f"cannot get {HF_HUB_PREFIX}{where}", exc) from None
    return Path(local)

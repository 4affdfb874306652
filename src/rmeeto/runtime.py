"""Where and in what precision code runs: the one device resolver and the one dtype vocabulary of every command.

    device = resolve_device("auto")               # CUDA when available, else CPU
    dtype = resolve_dtype("bf16", device)         # torch.bfloat16; "auto" -> bf16 on CUDA, fp32 elsewhere
    with autocast(device, dtype): ...             # a no-op context for float32

Names: ``fp32`` / ``bf16`` / ``fp16``, plus ``auto`` and the aliases in :data:`DTYPE_ALIASES` (``none`` is the
evaluation commands' spelling of "no autocast", i.e. fp32). Random seeds are integers in [0, :data:`SEED_MAX`]
(:func:`check_seed`).
"""

from __future__ import annotations

from typing import Optional, Union

import torch

__all__ = ["DTYPES", "DTYPE_ALIASES", "SEED_MAX", "resolve_device", "resolve_dtype", "dtype_name", "autocast",
           "check_seed"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_ALIASES = {"none": "fp32", "float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16",
                 "half": "fp16"}

# numpy's legacy seeding bound: every generator the package seeds (random, numpy, torch CPU/CUDA) accepts it, with
# room for the per-epoch and per-sample offsets added to it
SEED_MAX = 2**32 - 1


def check_seed(name: str, value) -> int:
    """``value`` when it is an integer in [0, SEED_MAX]; else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise ValueError(f"{name} must be an integer from 0 to {SEED_MAX}, got {value!r}")
    return value


def resolve_device(device: Union[str, torch.device, None] = "auto", local_rank: Optional[int] = None) -> torch.device:
    """``"auto"``/None -> CUDA when available, else CPU; anything else goes to :class:`torch.device`.

    ``local_rank`` (a torchrun process's GPU) completes an index-less ``cuda``; without it an index-less ``cuda``
    is the current device. Raises ValueError for a malformed name, a type other than cpu and cuda, or a CUDA device
    that is not there.
    """
    if device is None or str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device {str(device)!r}: {exc}") from None
    if device.type not in ("cpu", "cuda"):  # mps, xla, meta...: the kernels, autocast and timing assume these two
        raise ValueError(f"device {str(device)!r} is not supported: use cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} requested but no CUDA device is available")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device() if local_rank is None else local_rank)
    return device


def resolve_dtype(name: Union[str, torch.dtype], device: Optional[torch.device] = None) -> torch.dtype:
    """A dtype name of :data:`DTYPES` (or an alias, or a torch.dtype) -> torch.dtype.

    ``"auto"`` is bf16 on CUDA and fp32 elsewhere. fp16 on a known non-CUDA ``device`` is refused (CPU kernels
    for it are slow or missing, and the autocast fp16 path is a CUDA feature).
    """
    if isinstance(name, torch.dtype):
        dtype = name
    else:
        key = DTYPE_ALIASES.get(str(name).lower(), str(name).lower())
        if key == "auto":
            return torch.bfloat16 if device is not None and device.type == "cuda" else torch.float32
        if key not in DTYPES:
            raise ValueError(f"unknown dtype {name!r}; choose from {', '.join(['auto', *DTYPES])}")
        dtype = DTYPES[key]
    if dtype == torch.float16 and device is not None and device.type != "cuda":
        raise ValueError("fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
    return dtype


def dtype_name(dtype: Optional[torch.dtype]) -> str:
    """torch.float16 -> ``"fp16"`` (None -> ``"fp32"``)."""
    if dtype is None:
        return "fp32"
    for name, value in DTYPES.items():
        if value == dtype:
            return name
    return str(dtype).replace("torch.", "")


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """Autocast to ``dtype`` on ``device``; autocast explicitly off for float32 or None (so an enclosing
    autocast region does not leak into fp32 measurements)."""
    if dtype is None or dtype == torch.float32:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


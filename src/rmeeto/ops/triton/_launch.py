"""Shared launch helper of the Triton kernels."""

from __future__ import annotations

import contextlib

import torch


def on_device(device: torch.device):
    """Launch context for a kernel over tensors on ``device``: that CUDA device current (Triton launches on the
    current one); nothing for CPU tensors, which only reach the kernels under TRITON_INTERPRET=1."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()

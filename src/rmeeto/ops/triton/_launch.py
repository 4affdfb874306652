"""Shared launch helpers of the Triton kernels."""

from __future__ import annotations

import contextlib

import torch


def on_device(device: torch.device):
    """Launch context for a kernel over tensors on ``device``: that CUDA device current (Triton launches on the
    current one); nothing for CPU tensors, which only reach the kernels under TRITON_INTERPRET=1."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def launch(kernel, grid, device: torch.device, *args, **meta):
    """Launch the ``@triton.jit`` ``kernel`` on ``grid`` over tensors on ``device``: positional ``args`` in the
    kernel's parameter order, ``meta`` the constexpr parameters and launch options (num_warps, num_stages).
    The one place kernels are launched from, so the launch path can be made cheaper in one place."""
    with on_device(device):
        return kernel[grid](*args, **meta)

"""Type aliases shared by the library's modules."""

from __future__ import annotations

import os
from typing import Union

import torch

__all__ = ["PathLike", "Tensor"]

PathLike = Union[str, os.PathLike]  # a file-system path: what open() and pathlib.Path accept
Tensor = torch.Tensor

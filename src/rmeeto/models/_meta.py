"""What every named model config carries besides its architecture: weight and preprocessing metadata.

Shared by :class:`rmeeto.models.ModelConfig` (Vim, VideoMamba) and :class:`rmeeto.models.vit.ViTConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = ["NamedModelConfig", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class NamedModelConfig:
    """A named model's metadata; subclasses narrow ``arch`` to their architecture class and add their fields."""

    name: str
    arch: Any
    description: str = ""
    checkpoint: Optional[str] = None  # official file name, for users who hold it
    top1: Optional[float] = None  # published ImageNet-1k top-1 of that file
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    paper_merge: dict[str, Any] = field(default_factory=dict)  # R-MeeTo defaults, read by MergeConfig.paper

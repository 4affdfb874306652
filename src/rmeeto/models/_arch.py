"""The one description of a Vim-family architecture: :class:`VimArch`.

Every number the rest of the code derives from a model's shape (token count, class-token index, grid, inner
width, dt rank) is a property of this frozen dataclass, so it is written once. The registry stores one per
named model, :class:`~rmeeto.models.vim.VisionMamba` builds from one and exposes it as ``model.arch``, and
FLOPs, the merge presets, checkpoint inspection, the CLI and the demo read it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

__all__ = ["VimArch", "CLS_POSITIONS", "INIT_SCHEMES"]

# where the class token sits in the sequence entering the first block
CLS_POSITIONS = ("middle", "first", "none")
# from-scratch initialisation: Vim's, or VideoMamba's (every Linear trunc-normal 0.02 with zero bias, dt
# projections included; class token zero; patch embedding left at PyTorch's default)
INIT_SCHEMES = ("vim", "videomamba")

# constructor arguments that change training or numerics settings but not the architecture
_NOT_ARCHITECTURE = frozenset({
    "drop_rate", "drop_path_rate", "norm_epsilon", "residual_in_fp32", "scan_backend", "device", "dtype",
    "rms_norm", "fused_add_norm", "if_abs_pos_embed", "if_rope", "if_rope_residual", "bimamba_type",
    "use_double_cls_token", "final_pool_type", "if_bidirectional", "stride", "if_cls_token",
    "use_middle_cls_token", "if_divide_out", "if_devide_out",
    # official VideoMamba constructor arguments that are not architecture
    "fc_drop_rate", "bimamba", "ssm_cfg", "initializer_cfg", "use_checkpoint", "checkpoint_num",
    "kernel_size", "channels",  # official names of tubelet_size and in_chans (read below)
})


@dataclass(frozen=True)
class VimArch:
    """Architecture of a Vim-family model (Vim: class token in the middle, the two directions averaged).

    img_size / patch_size: square input side and patch side in pixels (img_size a multiple of patch_size).
    in_chans, num_classes (0 = no classifier), embed_dim (E), depth (blocks).
    d_state (N), expand (d_inner = expand * E), d_conv (depthwise conv width), dt_rank (None = ceil(E / 16)).
    cls_position: "middle" (Vim: index num_patches // 2), "first" (index 0) or "none".
    divide_out: the mixer halves the sum of its two directions (Vim True; VideoMamba False).
    num_frames: None for an image model (input [batch, C, H, W]); the clip length T of a video model (input
        [batch, C, T, H, W], VideoMamba's 3-D patch embedding; the class token must be first).
    tubelet_size: frames per patch of a video model (official ``kernel_size``); 1 for image models.
    init: from-scratch initialisation scheme, one of INIT_SCHEMES ("vim" or "videomamba"); loaded
        weights replace it, so it only matters when training from scratch.
    """

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 192
    depth: int = 24
    d_state: int = 16
    expand: int = 2
    d_conv: int = 4
    dt_rank: Optional[int] = None
    cls_position: str = "middle"
    divide_out: bool = True
    num_frames: Optional[int] = None
    tubelet_size: int = 1
    init: str = "vim"

    def __post_init__(self):
        for name in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "d_state", "expand", "d_conv"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("num_classes", self.num_classes, minimum=0)
        if self.dt_rank is not None:
            _check_int("dt_rank", self.dt_rank, minimum=1)
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.cls_position not in CLS_POSITIONS:
            raise ValueError(f"cls_position must be one of {', '.join(CLS_POSITIONS)}; got {self.cls_position!r}")
        if not isinstance(self.divide_out, bool):
            raise ValueError(f"divide_out must be True or False, got {self.divide_out!r}")
        _check_int("tubelet_size", self.tubelet_size, minimum=1)
        if self.num_frames is None:
            if self.tubelet_size != 1:
                raise ValueError(f"tubelet_size {self.tubelet_size} needs a video model (num_frames set)")
        else:
            _check_int("num_frames", self.num_frames, minimum=1)
            if self.num_frames % self.tubelet_size:
                raise ValueError(f"num_frames {self.num_frames} is not a multiple of tubelet_size {self.tubelet_size}")
            if self.cls_position != "first":
                raise ValueError(f"video models put the class token first; got cls_position={self.cls_position!r}")
        if self.init not in INIT_SCHEMES:
            raise ValueError(f"init must be one of {', '.join(INIT_SCHEMES)}; got {self.init!r}")

    # ------------------------------------------------------------------ derived facts
    @property
    def grid_size(self) -> tuple[int, int]:
        """(rows, columns) of the patch grid."""
        side = self.img_size // self.patch_size
        return (side, side)

    @property
    def is_video(self) -> bool:
        return self.num_frames is not None

    @property
    def temporal_size(self) -> int:
        """Patches along time: num_frames // tubelet_size for a video model, 1 for an image model."""
        return 1 if self.num_frames is None else self.num_frames // self.tubelet_size

    @property
    def num_spatial_patches(self) -> int:
        """Patches of one frame (rows * columns of the grid)."""
        rows, cols = self.grid_size
        return rows * cols

    @property
    def num_patches(self) -> int:
        """All patch tokens: temporal_size * rows * columns (frame-major for video)."""
        return self.temporal_size * self.num_spatial_patches

    @property
    def num_tokens(self) -> int:
        """Tokens entering the first block: the patches plus the class token (if any)."""
        return self.num_patches + (self.cls_position != "none")

    @property
    def cls_index(self) -> Optional[int]:
        """Index of the class token in the first block's sequence (None without a class token)."""
        return {"middle": self.num_patches // 2, "first": 0, "none": None}[self.cls_position]

    @property
    def d_inner(self) -> int:
        return self.expand * self.embed_dim

    @property
    def dt_proj_rank(self) -> int:
        """Rank of the dt projection: ``dt_rank``, or ceil(embed_dim / 16) when that is None."""
        return math.ceil(self.embed_dim / 16) if self.dt_rank is None else self.dt_rank

    @property
    def input_size(self) -> tuple[int, ...]:
        """(channels, height, width) of one input image; (channels, frames, height, width) of one clip."""
        if self.num_frames is not None:
            return (self.in_chans, self.num_frames, self.img_size, self.img_size)
        return (self.in_chans, self.img_size, self.img_size)

    # ------------------------------------------------------------------ conversions
    def replace(self, **changes: Any) -> "VimArch":
        """A copy with ``changes`` applied (field names of this class), validated again."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"VimArch has no field {', '.join(unknown)}; fields: {', '.join(_field_names())}")
        return dataclasses.replace(self, **changes)

    def constructor_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~rmeeto.models.vim.VisionMamba` (image) or
        :class:`~rmeeto.models.videomamba.VideoMamba` (video) that build this architecture (official names where
        the official constructor has one: ``if_divide_out``, ``kernel_size``; image models get no video
        arguments)."""
        video = ("num_frames", "tubelet_size")
        kwargs = {f: getattr(self, f) for f in _field_names() if f != "divide_out" and f not in video}
        kwargs["if_divide_out"] = self.divide_out
        if self.num_frames is not None:
            kwargs.update(num_frames=self.num_frames, kernel_size=self.tubelet_size)
        return kwargs

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any], base: Optional["VimArch"] = None) -> "VimArch":
        """The architecture that ``VisionMamba(**kwargs)`` builds, starting from ``base`` (default: Vim-Ti).

        Understands the official flags (``if_divide_out`` and its misspelling ``if_devide_out``,
        ``use_middle_cls_token``, ``if_cls_token``, VideoMamba's ``kernel_size`` and ``channels``); settings that are not architecture (``drop_path_rate``,
        ``scan_backend``, ...) are ignored; any other key is a ValueError."""
        fields = set(_field_names())
        changes = {k: v for k, v in kwargs.items() if k in fields}
        unknown = sorted(k for k in kwargs if k not in fields and k not in _NOT_ARCHITECTURE)
        if unknown:
            raise ValueError(f"not a Vim architecture argument: {', '.join(unknown)}; fields: {', '.join(_field_names())}")
        for key in ("if_divide_out", "if_devide_out"):
            if key in kwargs:
                changes["divide_out"] = bool(kwargs[key])
        if "kernel_size" in kwargs and "tubelet_size" not in kwargs:
            changes["tubelet_size"] = kwargs["kernel_size"]
        if "channels" in kwargs and "in_chans" not in kwargs:
            changes["in_chans"] = kwargs["channels"]
        if "cls_position" not in kwargs:
            if kwargs.get("if_cls_token", True) is False:
                changes["cls_position"] = "none"
            elif "use_middle_cls_token" in kwargs:
                changes["cls_position"] = "middle" if kwargs["use_middle_cls_token"] else "first"
        return (base or cls()).replace(**changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(VimArch)]


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")

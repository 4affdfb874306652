"""VideoMamba on video clips (the official Kinetics-400 models), in pure PyTorch.

Paper: "VideoMamba: State Space Model for Efficient Video Understanding" (Li et al., 2024,
https://arxiv.org/abs/2403.06977). Parameter names and shapes are those of the official checkpoints
(``videomamba_{t,s,m}16_k400_f8_res224.pth``), so they load strictly.

It is Vim with three changes, all described by its :class:`~rmeeto.models.VimArch` (``num_frames`` set,
``cls_position="first"``, ``divide_out=False``); the blocks and mixers are :mod:`rmeeto.models.vim`'s, untouched:

    patches = Conv3d(kernel = stride = (tubelet, 16, 16))(clip)     [batch, T, 196, E]   (T = frames / tubelet)
    patches += pos_embed[:, 1:] (the same spatial rows for every frame), then temporal_pos_embedding[:, t]
    tokens = [cls_token + pos_embed[:, 0], patches frame-major]    [batch, 1 + T * 196, E]
    depth x Block, final add + RMSNorm, head on token 0 (which stays token 0 through merges)

The image VideoMamba models (``videomamba_*_patch16_224``) need no code of their own: they are
:class:`~rmeeto.models.vim.VisionMamba` with the class token first and ``divide_out=False``.

Other frame counts and image sizes: build the model with ``num_frames`` / ``img_size`` and load an 8-frame 224px
checkpoint; :func:`checkpoint_filter_fn` resizes ``pos_embed`` bicubically on the patch grid (class row kept)
and ``temporal_pos_embedding`` by linear interpolation along time (as the official fine-tuning code does).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from rmeeto.checkpoint import FilterResult, unwrap_module
from rmeeto.models.vim import VisionMamba, filter_state_dict

Tensor = torch.Tensor

__all__ = ["PatchEmbed3d", "VideoMamba", "tubelet_linear", "checkpoint_filter_fn", "filter_state_dict_video",
           "resample_temporal_embed"]


class PatchEmbed3d(nn.Module):
    """Conv3d(in_chans, E, kernel = stride = (tubelet, patch, patch)):
    [batch, C, T, H, W] -> [batch, T / tubelet, (H / patch) * (W / patch), E], patches row-major per frame."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, tubelet_size: int = 1, in_chans: int = 3,
                 embed_dim: int = 192, device=None, dtype=None):
        super().__init__()
        self.img_size, self.patch_size, self.tubelet_size = img_size, patch_size, tubelet_size
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]  # per frame, as the official attribute
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel, stride=kernel, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        if x.is_cuda:
            # the strided conv as one GEMM over cut-out tubelets (see vim.PatchEmbed: far faster than cuDNN's
            # choice on Hopper in fp16)
            return tubelet_linear(x, self.proj.weight, self.proj.bias)
        y = self.proj(x)  # [batch, E, T', rows, cols]
        return y.flatten(3).permute(0, 2, 3, 1)


def tubelet_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """The strided Conv3d of :class:`PatchEmbed3d` as one matrix product: x [batch, C, T, H, W], weight
    [E, C, k, p, p] (kernel = stride) -> [batch, T / k, (H / p) * (W / p), E]. Each tubelet is cut out and
    flattened in the weight's (C, k, p, p) order."""
    b, c, t, h, w = x.shape
    k, p = weight.shape[2], weight.shape[-1]
    cubes = x.reshape(b, c, t // k, k, h // p, p, w // p, p).permute(0, 2, 4, 6, 1, 3, 5, 7)
    cubes = cubes.reshape(b, t // k, (h // p) * (w // p), c * k * p * p)
    return F.linear(cubes, weight.reshape(weight.shape[0], -1), bias)


class VideoMamba(VisionMamba):
    """VideoMamba for clips ``[batch, in_chans, num_frames, img_size, img_size]``.

    Constructor arguments use the official names (``num_frames``, ``kernel_size`` = tubelet, ``img_size``,
    ``patch_size``, ``embed_dim``, ``depth``, ``channels`` or ``in_chans``, ``num_classes``, ``drop_path_rate``,
    ``fc_drop_rate`` ...); ``model.arch`` describes what was built. The surface is Vim's: ``forward_tokens``
    returns ([batch, 1 + T * patches, E], TokenState), ``forward_features`` the normalised class token
    [batch, E], ``forward`` the logits [batch, num_classes]. Merging (:func:`rmeeto.merge.apply_merge`) treats
    the space-time tokens as one flat sequence with the class token at 0, as the official method does.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        depth: int = 24,
        embed_dim: int = 192,
        in_chans: int = 3,
        num_classes: int = 400,
        num_frames: int = 8,
        kernel_size: int = 1,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        fc_drop_rate: float = 0.0,
        if_divide_out: bool = False,
        cls_position: str = "first",
        init: str = "videomamba",
        device=None,
        dtype=None,
        channels: Optional[int] = None,
        **kwargs,
    ):
        # official VideoMamba flags: accepted at the values that select this architecture
        video_fixed = {"bimamba": True, "ssm_cfg": None, "initializer_cfg": None, "use_checkpoint": False}
        for key, value in video_fixed.items():
            given = kwargs.pop(key, value)
            if given != value:
                raise ValueError(f"{key}={given!r} selects a VideoMamba variant rmeeto does not implement "
                                 f"(only {key}={value!r})")
        kwargs.pop("checkpoint_num", None)  # only meaningful with use_checkpoint=True
        if channels is not None:
            in_chans = channels
        super().__init__(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
            embed_dim=embed_dim, depth=depth, drop_rate=drop_rate, drop_path_rate=drop_path_rate,
            if_divide_out=if_divide_out, cls_position=cls_position, init=init, device=device, dtype=dtype, **kwargs,
        )
        # the image arch (one frame) -> the video arch; validates num_frames, tubelet and the class position
        self.arch = self.arch.replace(num_frames=num_frames, tubelet_size=kernel_size)
        kw = {"device": device, "dtype": dtype}
        self.num_frames = num_frames
        self.num_patches = self.arch.num_patches
        self.num_tokens = self.arch.num_tokens
        # pos_embed stays [1, patches per frame + 1, E] (built by VisionMamba from the one-frame arch)
        self.patch_embed = PatchEmbed3d(img_size, patch_size, kernel_size, in_chans, embed_dim, **kw)
        self.temporal_pos_embedding = nn.Parameter(torch.zeros(1, self.arch.temporal_size, embed_dim, **kw))
        self.temporal_pos_embedding._no_weight_decay = True
        self.head_drop = nn.Dropout(fc_drop_rate)
        self._init_weights()  # again: the patch embedding was replaced

    @torch.no_grad()
    def _init_weights(self):
        super()._init_weights()
        if hasattr(self, "temporal_pos_embedding"):
            nn.init.zeros_(self.temporal_pos_embedding)  # official: left at zero

    def no_weight_decay(self) -> set[str]:
        """The official video recipe's exemptions (besides 1-D parameters and biases, which every rmeeto
        optimizer exempts): the embeddings only. Unlike Vim's list, ``A_log`` [d_inner, d_state] is decayed,
        as in the official Kinetics fine-tuning."""
        return {"cls_token", "pos_embed", "temporal_pos_embedding"}

    @staticmethod
    def checkpoint_filter(state_dict, model: "VideoMamba") -> FilterResult:
        """The filter :func:`rmeeto.checkpoint.load_checkpoint` applies (see :func:`filter_state_dict_video`)."""
        return filter_state_dict_video(state_dict, model)

    def embed(self, x: Tensor) -> Tensor:
        """[batch, C, T, H, W] -> [batch, 1 + T / tubelet * patches, E]: class token first, then frame-major
        patches with their spatial and temporal position embeddings (added in the official order)."""
        a = self.arch
        want = (a.in_chans, a.num_frames, a.img_size, a.img_size)
        if x.dim() != 5 or tuple(x.shape[1:]) != want:
            raise ValueError(
                f"{type(self).__name__} expects clips [batch, {', '.join(map(str, want))}] "
                f"(batch, channels, frames, height, width), got {list(x.shape)}"
            )
        patches = self.patch_embed(x)  # [batch, T', P, E]
        pos = self.pos_embed.to(patches.dtype)
        patches = patches + pos[:, None, 1:]
        patches = patches + self.temporal_pos_embedding.to(patches.dtype)[:, :, None]
        cls = (self.cls_token.to(patches.dtype) + pos[:, :1]).expand(patches.shape[0], -1, -1)
        return self.pos_drop(torch.cat([cls, patches.flatten(1, 2)], dim=1))

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        return features if pre_logits else self.head(self.head_drop(features))


# ============================================================================================ checkpoints
def resample_temporal_embed(embed: Tensor, length: int) -> Tensor:
    """[1, T, E] -> [1, length, E] by linear interpolation along time (align_corners=False, in float32,
    returned in the input dtype), the official way to fine-tune a checkpoint on another clip length."""
    if embed.dim() != 3:
        raise ValueError(f"temporal_pos_embedding must be [1, T, E], got shape {list(embed.shape)}")
    out = F.interpolate(embed.float().transpose(1, 2), size=length, mode="linear", align_corners=False)
    return out.transpose(1, 2).to(embed.dtype)


def filter_state_dict_video(state_dict: Mapping[str, Any], model: nn.Module) -> FilterResult:
    """Vim's filter (:func:`rmeeto.models.vim.filter_state_dict`: containers, prefixes, ``pos_embed`` resized
    around its first-position class row, ``head.*`` dropped for another class count), then
    ``temporal_pos_embedding`` [1, T, E] resized to the model's T by linear interpolation."""
    model = unwrap_module(model)
    result = filter_state_dict(state_dict, model)
    out = result.state_dict
    temporal = out.get("temporal_pos_embedding")
    own = getattr(model, "temporal_pos_embedding", None)
    if isinstance(temporal, Tensor) and own is not None and temporal.shape != own.shape:
        if temporal.dim() == 3 and temporal.shape[-1] == own.shape[-1]:
            out["temporal_pos_embedding"] = resample_temporal_embed(temporal, own.shape[1])
            result.notes.append(
                f"temporal_pos_embedding interpolated from {temporal.shape[1]} to {own.shape[1]} time steps"
            )
    return result


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, Tensor]:
    """Map a checkpoint onto a :class:`VideoMamba` (timm's ``pretrained_filter_fn`` contract; the input is not
    modified): :func:`filter_state_dict_video`, each change announced with a ``UserWarning``."""
    result = filter_state_dict_video(state_dict, model)
    for note in result.notes:
        warnings.warn(note, stacklevel=2)
    return result.state_dict

"""Which image patches end up in the same token: source maps of a merging Vim, drawn over the image.

    groups, info = token_groups(model, images, layer=None)   # groups: [batch, grid_h, grid_w] token ids
    fig = draw_token_groups(image_rgb, groups[0], title="pred 3 (true 3)")

    # a VideoMamba clip model: groups [batch, frames, grid_h, grid_w], one id space over the whole clip
    groups, info = token_groups(video_model, clips)          # clips [batch, C, T, H, W]
    fig = draw_clip_token_groups(frames_rgb, groups[0])      # one column per frame

The class token is handled explicitly: it sits at ``model.cls_position`` in the *original* token order
(the middle of the sequence for the official "midclstok" models) and at ``state.cls_index`` in the current
order; both are removed before groups are mapped onto the patch grid. The official visualizer instead treats
original index 0 (the top-left patch) as the class token, so it merges the real class token like a patch,
reads logits from the wrong token and drops the first patch column from the picture (SPEC section 9); we
don't.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from rmeeto.backbones import block_state, blocks_of, cls_position_of, depth_of, forward_tokens, head_logits
from rmeeto.models.vim import VisionMamba

Tensor = torch.Tensor

__all__ = ["token_groups", "draw_token_groups", "draw_clip_token_groups", "group_colors"]

DROPPED = -1  # group id of patches whose token was pruned away


@torch.no_grad()
def token_groups(model: VisionMamba, images: Tensor, layer: Optional[int] = None) -> tuple[Tensor, dict]:
    """Group the patches of ``images`` [batch, C, H, W] (a video model: clips [batch, C, T, H, W]) by the
    token they belong to at ``layer``.

    ``layer`` K (0 <= K < depth, default depth - 1) means the tokens that layer K's mixer sees, i.e. after the
    merge at the start of block K; for the last layer this is also what the head reads. Negative K counts
    from the end.

    Returns ``groups`` [batch, grid_h, grid_w] int64 ([batch, T / tubelet, grid_h, grid_w] for a video model:
    merging runs over the flattened space-time tokens, so one token may hold patches of several frames), the
    current index (class token excluded, so ids run over
    0 .. tokens - 2) of the token each patch belongs to, or ``DROPPED`` (-1) for patches pruned away; and a
    dict with ``logits`` [batch, classes], ``tokens`` (count at that layer, class token included),
    ``cls_index`` (class-token index at that layer) and ``layer``.
    """
    depth = depth_of(model)
    k = depth - 1 if layer is None else layer
    if k < 0:
        k += depth
    if not 0 <= k < depth:
        raise ValueError(f"layer must be in [{-depth}, {depth - 1}] for a {depth}-layer model, got {layer}")

    captured = {}

    def hook(module, args, output):
        # Vim (hidden, residual, state) / ViT (x, state); state.source is the map after this block's merge
        captured["state"] = block_state(output)
        captured["tokens"] = output[0].shape[1]

    was_training = model.training
    model.eval()
    handle = blocks_of(model)[k].register_forward_hook(hook)
    try:
        tokens, final = forward_tokens(model, images, track_source=True)
        logits = head_logits(model, tokens, final)
    finally:
        handle.remove()
        model.train(was_training)

    state = captured["state"]
    source = state.source  # [batch, tokens, original_tokens], 0/1
    cls_now, cls_orig = state.cls_index, cls_position_of(model)
    # the class token is never merged: its row is itself only, and no patch row contains it
    keep_rows = [i for i in range(source.shape[1]) if i != cls_now]
    keep_cols = [j for j in range(source.shape[2]) if j != cls_orig]
    patch_source = source[:, keep_rows][:, :, keep_cols]  # [batch, tokens - 1, num_patches]
    covered = patch_source.amax(dim=1) > 0  # [batch, num_patches]; False where the token was pruned
    groups = patch_source.argmax(dim=1)
    groups = torch.where(covered, groups, torch.full_like(groups, DROPPED))
    gh, gw = model.patch_embed.grid_size
    arch = getattr(model, "arch", None)  # a VimArch; timm ViTs have none (and no frames)
    frames = (arch.temporal_size,) if getattr(arch, "is_video", False) else ()
    info = {"logits": logits, "tokens": captured["tokens"], "cls_index": cls_now, "layer": k}
    return groups.view(-1, *frames, gh, gw), info


def group_colors(groups: np.ndarray) -> np.ndarray:
    """RGBA colour [grid_h, grid_w, 4] per patch: every multi-patch group gets its own colour, largest group
    first, from the strong tab10 colours then lighter/darker variants (greys left out, as they would read as
    "no group"); single and pruned patches are transparent (pruned ones are hatched by
    :func:`draw_token_groups`)."""
    import matplotlib

    ids, counts = np.unique(groups[groups >= 0], return_counts=True)
    multi = ids[counts > 1][np.argsort(-counts[counts > 1], kind="stable")]
    tab10 = matplotlib.colormaps["tab10"](np.arange(10))
    tab20 = matplotlib.colormaps["tab20"](np.arange(20))
    tab20b = matplotlib.colormaps["tab20b"](np.arange(20))
    palette = np.concatenate([np.delete(tab10, 7, axis=0), np.delete(tab20[1::2], 7, axis=0), tab20b])
    rgba = np.zeros(groups.shape + (4,))
    for n, g in enumerate(multi):
        rgba[groups == g] = palette[n % len(palette)]
    return rgba


def _multi_patch_ids(groups: np.ndarray) -> set:
    ids, counts = np.unique(groups, return_counts=True)
    return set(ids[(counts > 1) & (ids >= 0)].tolist())


def _boundaries(groups: np.ndarray, patch: float, multi: Optional[set] = None):
    """Line segments (in pixels) outlining the multi-patch groups: every patch edge (image border included)
    with a different group on the other side, where at least one side belongs to a multi-patch group
    (``multi``: their ids, default those of ``groups``; a clip passes the ids of its whole groups array)."""
    gh, gw = groups.shape
    multi = _multi_patch_ids(groups) if multi is None else multi
    outside = DROPPED - 1
    padded = np.full((gh + 2, gw + 2), outside, dtype=np.int64)
    padded[1:-1, 1:-1] = groups
    segs = []
    for i in range(gh + 1):  # horizontal edges: between padded rows i and i + 1, columns 1..gw
        for j in range(gw):
            a, b = padded[i, j + 1], padded[i + 1, j + 1]
            if a != b and (a in multi or b in multi):
                segs.append([(j * patch, i * patch), ((j + 1) * patch, i * patch)])
    for i in range(gh):  # vertical edges
        for j in range(gw + 1):
            a, b = padded[i + 1, j], padded[i + 1, j + 1]
            if a != b and (a in multi or b in multi):
                segs.append([(j * patch, i * patch), (j * patch, (i + 1) * patch)])
    return segs


def draw_token_groups(image: np.ndarray, groups: np.ndarray, title: str = "", alpha: float = 0.6,
                      panel_inches: float = 3.6):
    """Figure with the image (left) and the token groups over it (right).

    image: [H, W, 3] floats in [0, 1]; groups: [grid_h, grid_w] token ids (``DROPPED`` = pruned).
    On the right the image is shown in light grey so that colours read on dark images too; multi-patch
    tokens are filled with one colour each and outlined, single-patch tokens are left clear (a faint grid
    marks the patches) and pruned patches are hatched dark. Returns a matplotlib Figure (the caller saves
    and closes it).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection
    from matplotlib.patches import Rectangle

    groups = np.asarray(groups)
    h, w = image.shape[:2]
    gh, gw = groups.shape
    patch = h / gh
    fig, axes = plt.subplots(1, 2, figsize=(2 * panel_inches, panel_inches + 0.7), dpi=100)
    light = 0.45 + 0.55 * image.mean(axis=-1)  # grey, compressed to [0.45, 1]
    axes[0].imshow(image, interpolation="nearest", extent=(0, w, h, 0))
    axes[1].imshow(light, cmap="gray", vmin=0, vmax=1, interpolation="nearest", extent=(0, w, h, 0))
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].set_title("input", fontsize=10)

    ax = axes[1]
    ax.imshow(group_colors(groups), alpha=alpha, interpolation="nearest", extent=(0, w, h, 0))
    # faint patch grid so single patches are still visible as cells
    grid = [[(x * patch, 0), (x * patch, h)] for x in range(1, gw)]
    grid += [[(0, y * patch), (w, y * patch)] for y in range(1, gh)]
    ax.add_collection(LineCollection(grid, colors=(0, 0, 0, 0.15), linewidths=0.5))
    ax.add_collection(LineCollection(_boundaries(groups, patch), colors="black", linewidths=1.5))
    for i, j in zip(*np.nonzero(groups == DROPPED)):
        ax.add_patch(Rectangle((j * patch, i * patch), patch, patch, facecolor=(0, 0, 0, 0.6), edgecolor="none",
                               hatch="xx"))
    ids, counts = np.unique(groups[groups >= 0], return_counts=True)
    dropped = int((groups == DROPPED).sum())
    sub = f"{len(ids)} patch tokens, {int((counts > 1).sum())} merged"
    if dropped:
        sub += f", {dropped} patches pruned"
    ax.set_title(sub, fontsize=10)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig


def draw_clip_token_groups(frames: np.ndarray, groups: np.ndarray, title: str = "", alpha: float = 0.6,
                           panel_inches: float = 2.4):
    """Figure for one clip: the frames (top row) and their token groups (bottom row), one column per frame.

    frames: [T, H, W, 3] floats in [0, 1]; groups: [T', grid_h, grid_w] token ids from :func:`token_groups`
    (T' = T / tubelet; with a tubelet > 1 each group row is drawn over the first frame of its tubelet).
    One token is one colour across all frames, so a token merged over several frames shows the same colour
    in each; otherwise drawn as :func:`draw_token_groups`. Returns a matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection
    from matplotlib.patches import Rectangle

    groups = np.asarray(groups)
    if groups.ndim != 3:
        raise ValueError(f"groups must be [frames, grid_h, grid_w] for one clip, got shape {list(groups.shape)}")
    steps, gh, gw = groups.shape
    if frames.shape[0] % steps:
        raise ValueError(f"{frames.shape[0]} frames do not split into {steps} tubelets")
    tubelet = frames.shape[0] // steps
    h, w = frames.shape[1:3]
    patch = h / gh
    colors = group_colors(groups)  # over the whole clip: one colour per token in every frame
    multi = _multi_patch_ids(groups)
    fig, axes = plt.subplots(2, steps, figsize=(steps * panel_inches, 2 * panel_inches + 0.7), dpi=100,
                             squeeze=False)
    for t in range(steps):
        image = frames[t * tubelet]
        top, bottom = axes[0, t], axes[1, t]
        top.imshow(image, interpolation="nearest", extent=(0, w, h, 0))
        top.set_title(f"frame {t * tubelet}", fontsize=9)
        bottom.imshow(0.45 + 0.55 * image.mean(axis=-1), cmap="gray", vmin=0, vmax=1, interpolation="nearest",
                      extent=(0, w, h, 0))
        bottom.imshow(colors[t], alpha=alpha, interpolation="nearest", extent=(0, w, h, 0))
        grid = [[(x * patch, 0), (x * patch, h)] for x in range(1, gw)]
        grid += [[(0, y * patch), (w, y * patch)] for y in range(1, gh)]
        bottom.add_collection(LineCollection(grid, colors=(0, 0, 0, 0.15), linewidths=0.5))
        bottom.add_collection(LineCollection(_boundaries(groups[t], patch, multi), colors="black", linewidths=1.2))
        for i, j in zip(*np.nonzero(groups[t] == DROPPED)):
            bottom.add_patch(Rectangle((j * patch, i * patch), patch, patch, facecolor=(0, 0, 0, 0.6),
                                       edgecolor="none", hatch="xx"))
        for ax in (top, bottom):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlim(0, w)
            ax.set_ylim(h, 0)
    ids, counts = np.unique(groups[groups >= 0], return_counts=True)
    spanning = sum(len({int(t) for t in np.nonzero(groups == g)[0]}) > 1 for g in ids[counts > 1])
    sub = f"{len(ids)} patch tokens, {int((counts > 1).sum())} merged ({spanning} across frames)"
    fig.suptitle(f"{title}\n{sub}" if title else sub, fontsize=11)
    fig.tight_layout()
    return fig

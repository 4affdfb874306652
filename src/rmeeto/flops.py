"""FLOPs of (merging) Vim models, counted as multiply-adds and reported in GFLOPs (MACs / 1e9).

Two counts:

* :func:`paper_flops` reproduces the official R-MeeTo ``calculate_flop_inference`` formula, which is what the
  paper and its checkpoints report (Vim-Ti/S/B 1.45/5.08/18.87 G unmerged, 1.28/3.58/13.21 G merged). It
  counts ONE scan direction, charges the conv for ``n + K - 1`` positions, adds the matching cost at every
  merging layer even when nothing is merged, and follows the *requested* tokens per layer (no
  ``final_tokens``/``compare`` rule), so it overstates Vim-Ti's merged cost. With ``clamp=True`` (what the
  commands print) a request above what a layer allows is clamped to ``(n - 1) // 2`` as the forward does
  (the release never asks for more; unclamped, an absurd ``-r`` gives negative GFLOPs).
* :func:`true_flops` counts what :mod:`rmeeto`'s forward actually computes on the token counts of
  :meth:`MergeConfig.schedule` (clamping and ``final_tokens`` included): both scan directions, in/out
  projections once, norms and element-wise work, the matching and weighted-average work of each real merge,
  the patch embedding of the ``num_patches`` patches and the head.

Both accept a registered model name, a :class:`~rmeeto.models.vim.VisionMamba`, a
:class:`~rmeeto.models.VimArch` or a dict of constructor arguments (resolved by :func:`rmeeto.models.arch_of`).
``merge_config=None`` means the unmerged model (for a patched model pass ``model.merge_config``).

A ViT/DeiT (registered name, timm model or :class:`~rmeeto.models.vit.ViTArch`) has one count,
:func:`rmeeto.merge_vit.vit_flops` (attention, MLP and ToMe matching on the static schedule): both functions
return it, so every command reports the same number for "paper" and "true" there.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from rmeeto.backbones import vit_arch
from rmeeto.merge import MergeConfig
from rmeeto.models import VimArch, arch_of
from rmeeto.models.vim import VisionMamba

__all__ = ["paper_flops", "true_flops", "flops_table"]

ArchLike = Union[str, VisionMamba, VimArch, dict]


def _vit_flops(arch, config):
    """:func:`rmeeto.merge_vit.vit_flops`, imported on first use (rmeeto.merge_vit imports timm)."""
    from rmeeto.merge_vit import vit_flops

    return vit_flops(arch, config)


def _requested(config: MergeConfig, layers: list[int]) -> dict[int, int]:
    """Requested tokens per merging layer (ignoring clamping and final_tokens)."""
    r = config.num_merged
    if isinstance(r, tuple):
        if len(r) != len(layers):
            raise ValueError(f"num_merged has {len(r)} entries but this model merges at {len(layers)} layers ({layers})")
        return dict(zip(layers, r))
    return {i: r for i in layers}


def _patch_volume(a: VimArch) -> int:
    """Input values per patch: in_chans * tubelet * patch^2."""
    return a.in_chans * a.tubelet_size * a.patch_size**2


def _metric_dim(metric: str, a: VimArch) -> int:
    return {"x": a.embed_dim, "B": a.d_state, "C": a.d_state, "delta": a.d_inner}[metric]


# ============================================================================================ paper formula
def _paper_layer(n: float, a: VimArch) -> float:
    c, di, r, N, k = a.embed_dim, a.d_inner, a.dt_proj_rank, a.d_state, a.d_conv
    proj = n * c * 4 * c + n * c * 2 * c
    conv = (n + k - 1) * di * k
    x_proj = n * di * (r + 2 * N)
    dt_proj = n * r * di
    scan = 9 * n * di * N + 2 * n * di
    return proj + conv + x_proj + dt_proj + scan


def paper_flops(arch_or_model: ArchLike, merge_config: Optional[MergeConfig] = None, *, clamp: bool = False) -> float:
    """GFLOPs by the official ``calculate_flop_inference`` formula (see the module docstring for its quirks).

    Per layer with n tokens: 6nC^2 (in/out proj) + (n+K-1)*Di*K (conv) + n*Di*(R+2N) (x_proj) + n*R*Di (dt_proj)
    + 9nDiN + 2nDi (scan), one direction. At each merging layer, before it, the matching cost with the count n
    entering it: 6nc + 2c(n/2)^2 + rC (c = C for metric x, N for B/C, 2C for delta; n/2 is a true division),
    then n -= r with r the requested count (``clamp``: at most (n - 1) // 2, the count the forward removes).
    Plus patch embed num_tokens*C*in_chans*tubelet*patch^2 (the release charges the class token too) and head
    C*classes. Video models (1569 tokens) follow the same formula.
    """
    if vit_arch(arch_or_model) is not None:
        return _vit_flops(vit_arch(arch_or_model), merge_config)["gflops"]
    a = arch_of(arch_or_model)
    c = a.embed_dim
    n: float = a.num_tokens
    layers = merge_config.merging_layers(a.depth) if merge_config is not None else []
    requested = _requested(merge_config, layers) if merge_config is not None else {}
    total = _paper_layer(n, a)
    for i in range(1, a.depth):
        if i in requested:
            r = requested[i]
            if clamp:  # as the forward (merge_schedule) does: an absurd -r never gives negative GFLOPs
                r = max(0, min(r, (int(n) - 1) // 2))
            m = _metric_dim(merge_config.metric, a)  # C, N (=16) for B/C, 2C for delta, as the release
            total += 6 * n * m + 2 * m * (n / 2) ** 2 + r * c
            n = n - r
        total += _paper_layer(n, a)
    total += a.num_tokens * c * _patch_volume(a) + c * a.num_classes
    return total / 1e9


# ============================================================================================ true count
def _true_layer(n: int, a: VimArch) -> dict[str, int]:
    c, di, r, N, k = a.embed_dim, a.d_inner, a.dt_proj_rank, a.d_state, a.d_conv
    per_branch = n * di * k + n * di * (r + 2 * N) + n * r * di  # conv + x_proj + dt_proj
    return {
        "mixer_proj": n * c * 2 * di + n * di * c,  # in_proj + out_proj
        "branches": 2 * per_branch,
        "scan": 2 * (9 * n * di * N + 2 * n * di),  # the usual selective-scan count (with D and z), per direction
        # residual add, RMSNorm (sum of squares + scale) and averaging the two directions
        "norm": n * c + 2 * n * c + n * di,
    }


def _true_matching(n: int, r: int, config: MergeConfig, a: VimArch) -> int:
    """Work of one merge of r of n tokens: exporting the metric, normalising it, the score matrix, and the
    size-weighted average of both streams (multiply by size, scatter-add, divide)."""
    if r <= 0:
        return 0
    c = a.embed_dim
    m = _metric_dim(config.metric, a)
    t = n - 1
    t_src, t_dst = (t + 1) // 2, t // 2
    cost = 2 * n * m + t_src * t_dst * m  # L2-normalise rows, then all source-destination scores
    if config.metric != "x":
        cost += n * m  # average of the two directions' B / C / delta
    if config.mode == "merge":
        width = 2 * c + 1  # hidden, residual and size go through one gather/scatter
        cost += n * width + r * width + (n - r) * 2 * c
    return cost


def true_flops(arch_or_model: ArchLike, merge_config: Optional[MergeConfig] = None) -> dict[str, Any]:
    """Multiply-adds :mod:`rmeeto`'s forward really does, on the token counts of ``merge_config.schedule``.

    Returns ``{"total": GFLOPs, "breakdown": {embed, mixer_proj, branches, scan, norm, matching, head} in
    GFLOPs, "tokens_per_layer": [tokens each layer's mixer processes (after that layer's merge)],
    "per_layer": [GFLOPs of each layer, its merge included]}``. Branch and scan terms cover both directions.
    """
    if vit_arch(arch_or_model) is not None:
        v = _vit_flops(vit_arch(arch_or_model), merge_config)
        return {"total": v["gflops"], "breakdown": {}, "tokens_per_layer": v["tokens_per_layer"], "per_layer": []}
    a = arch_of(arch_or_model)
    c = a.embed_dim
    config = merge_config if merge_config is not None else MergeConfig()
    sched = config.schedule(a.num_tokens, a.depth, a.cls_index)
    parts = dict.fromkeys(("embed", "mixer_proj", "branches", "scan", "norm", "matching", "head"), 0)
    # conv + pos_embed add (+ the temporal embedding add of a video model)
    parts["embed"] = a.num_patches * c * _patch_volume(a) + a.num_tokens * c + (a.num_patches * c if a.is_video else 0)
    per_layer, tokens = [], []
    for s in sched:
        layer = _true_layer(s.tokens_out, a)
        layer["matching"] = _true_matching(s.tokens_in, s.num_merged, config, a) if s.merging else 0
        for key, value in layer.items():
            parts[key] += value
        per_layer.append(sum(layer.values()) / 1e9)
        tokens.append(s.tokens_out)
    parts["norm"] += 3 * tokens[-1] * c if tokens else 0  # final add + RMSNorm over every token
    parts["head"] = c * a.num_classes
    breakdown = {k: v / 1e9 for k, v in parts.items()}
    return {
        "total": sum(parts.values()) / 1e9,
        "breakdown": breakdown,
        "tokens_per_layer": tokens,
        "per_layer": per_layer,
    }


def flops_table(arch_or_model: ArchLike, merge_config: Optional[MergeConfig] = None) -> list[dict[str, Any]]:
    """Rows for printing: the unmerged model, then (if ``merge_config`` is given) the merged one, each with
    ``setting``, ``paper_gflops``, ``true_gflops``, ``final_tokens`` and the reductions relative to unmerged
    (``paper_reduction`` / ``true_reduction`` = 1 - merged / unmerged)."""
    a = vit_arch(arch_or_model) or arch_of(arch_or_model)
    rows = []
    base_paper, base_true = paper_flops(a), true_flops(a)
    configs = [("unmerged", None)] + ([("merged", merge_config)] if merge_config is not None else [])
    for setting, cfg in configs:
        p = base_paper if cfg is None else paper_flops(a, cfg, clamp=True)
        t = base_true if cfg is None else true_flops(a, cfg)
        rows.append({
            "setting": setting,
            "paper_gflops": p,
            "true_gflops": t["total"],
            "final_tokens": t["tokens_per_layer"][-1] if t["tokens_per_layer"] else a.num_tokens,
            "paper_reduction": 1 - p / base_paper,
            "true_reduction": 1 - t["total"] / base_true["total"],
            "tokens_per_layer": t["tokens_per_layer"],
        })
    return rows

"""What the alternating-rounds benchmarks (eager_ab.py, proj_tiles_ab.py, graph_streams_ab.py) share: the
unmerged / merged model pair they time and the line they print per pair."""

from __future__ import annotations

import statistics

import torch

import rmeeto
from rmeeto.merge import MergeConfig


def models(name: str) -> dict:
    """{"unmerged": model, "merged": model (paper preset)}: ``name`` on CUDA in fp16 eval mode, seed 0 each."""
    out = {}
    for variant in ("unmerged", "merged"):
        torch.manual_seed(0)
        m = rmeeto.create_model(name).cuda().eval().half()
        if variant == "merged":
            rmeeto.apply_merge(m, MergeConfig.paper(name))
        out[variant] = m
    return out


def summary(name: str, label: str, unmerged_ms: list, merged_ms: list, batch: int) -> str:
    """One line: each model's median and best ms per batch over the rounds, the merged / unmerged speed ratio
    within each round (median, min, max) and images/s at the medians."""
    u, m = unmerged_ms, merged_ms
    ratios = [ui / mi for ui, mi in zip(u, m)]
    return (f"{name:<24} {label:<9} unmerged ms median {statistics.median(u):6.3f} best {min(u):6.3f} | "
            f"merged median {statistics.median(m):6.3f} best {min(m):6.3f} | merged/unmerged speed per round "
            f"median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}) | "
            f"img/s {batch * 1e3 / statistics.median(u):,.0f} / {batch * 1e3 / statistics.median(m):,.0f}")

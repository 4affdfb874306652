"""What the alternating-rounds benchmarks (eager_ab.py, proj_tiles_ab.py, graph_streams_ab.py) print per pair."""

from __future__ import annotations

import statistics


def summary(name: str, label: str, unmerged_ms: list, merged_ms: list, batch: int) -> str:
    """One line: each model's median and best ms per batch over the rounds, the merged / unmerged speed ratio
    within each round (median, min, max) and images/s at the medians."""
    u, m = unmerged_ms, merged_ms
    ratios = [ui / mi for ui, mi in zip(u, m)]
    return (f"{name:<24} {label:<9} unmerged ms median {statistics.median(u):6.3f} best {min(u):6.3f} | "
            f"merged median {statistics.median(m):6.3f} best {min(m):6.3f} | merged/unmerged speed per round "
            f"median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}) | "
            f"img/s {batch * 1e3 / statistics.median(u):,.0f} / {batch * 1e3 / statistics.median(m):,.0f}")

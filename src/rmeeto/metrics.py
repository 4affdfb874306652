"""Counting what a model got right, shared by image evaluation (:mod:`rmeeto.evaluate`) and the 12-view video
test (:mod:`rmeeto.video`): top-k hits per sample and sums over the ranks of a distributed run."""

from __future__ import annotations

import torch

__all__ = ["topk_hits", "sum_over_ranks"]


def topk_hits(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Whether each of the top-min(5, classes) predictions is the target: ``scores [batch, classes]``,
    ``targets [batch]`` -> bool [batch, k], best first (column 0: top-1 hit; any along a row: top-5 hit)."""
    topk = scores.topk(min(5, scores.shape[-1]), dim=-1).indices  # [batch, k]
    return topk.eq(targets[:, None])


def sum_over_ranks(totals: torch.Tensor) -> torch.Tensor:
    """``totals`` summed in place over the ranks of an initialised ``torch.distributed`` process group (each
    rank scored its own shard); unchanged without one. Returns ``totals``."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals, op=dist.ReduceOp.SUM)
    return totals

"""The processes of a run and how they agree: one process, or ``torchrun`` (NCCL on GPU, gloo on CPU).

Every cross-rank decision of the loop goes through a named helper here, so a reader sees *what* the ranks
agree on (skip this micro-batch, stop for a signal, the mean loss) rather than an index into a tensor.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist

__all__ = ["Ranks", "init_distributed", "StepAgreement", "agree_on_step", "sum_over_ranks", "gather_from_ranks"]


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run. ``own_group``: this run created the process group (and ends it)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    own_group: bool = False

    @property
    def master(self) -> bool:
        """Rank 0: the only process that logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def close(self) -> None:
        if self.own_group and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device_arg: str) -> Ranks:
    """Join the process group torchrun describes (``WORLD_SIZE``, ``LOCAL_RANK``...), or one process.
    An already initialised group is used as is (and left open)."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Ranks()
    use_cuda = torch.cuda.is_available() and device_arg in ("auto", "cuda")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size(), local_rank, own_group=True)


@dataclass(frozen=True)
class StepAgreement:
    """What every rank decided together after one micro-batch's forward.

    skip: some rank had no readable image in its batch, so every rank skips the backward (DDP needs all).
    stop: some rank caught a stop signal; every rank stops after this optimizer step.
    loss: the loss averaged over ranks (meaningful only when not ``skip``); NaN/inf when any rank's is.
    """

    loss: float
    skip: bool
    stop: bool

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss)


def agree_on_step(loss: Optional[torch.Tensor], stop_requested: bool, ranks: Ranks,
                  device: torch.device) -> StepAgreement:
    """Agree on the mean loss, on skipping an empty batch and on stopping, in one all-reduce per micro-batch.
    ``loss`` is this rank's scalar loss, or None when its batch had no readable image."""
    flags = torch.tensor([loss.detach().float().item() if loss is not None else 0.0,
                          0.0 if loss is not None else 1.0,
                          1.0 if stop_requested else 0.0], dtype=torch.float64, device=device)
    if ranks.distributed:
        dist.all_reduce(flags)
    return StepAgreement(loss=flags[0].item() / ranks.world, skip=flags[1].item() != 0, stop=flags[2].item() > 0)


def sum_over_ranks(value: int, ranks: Ranks, device: torch.device) -> int:
    """The sum of an integer count over all ranks (the count itself in one process)."""
    if not ranks.distributed:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return int(total.item())


def gather_from_ranks(obj: Any, ranks: Ranks) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (a collective: every rank must call it)."""
    if not ranks.distributed:
        return [obj]
    gathered: list = [None] * ranks.world
    dist.all_gather_object(gathered, obj)
    return gathered

"""CUDA-graph replay of the frozen teacher's forward and of the student's forward + backward.

Both remove per-op host work (thousands of kernel launches per step) without changing the arithmetic. The
switches: ``TrainConfig.cuda_graphs`` / ``--no-cuda-graphs``, ``TrainConfig.ddp_graphs`` / ``--ddp-graphs`` (the
student's graphs under DDP too; the teacher's forward is graphed under DDP whenever ``cuda_graphs`` is on), and
the environment variables ``RMEETO_TEACHER_GRAPH=0`` / ``RMEETO_TRAIN_GRAPH=0``.
"""

from __future__ import annotations

import inspect
import os
from typing import Optional

import torch
import torch.nn as nn

from rmeeto.fast import GraphedForward

__all__ = ["TeacherForward", "StudentGraph", "train_graph_enabled", "rng_kept"]


def rng_kept(device: torch.device):
    """A context that puts the CPU's and ``device``'s RNG states back as they were when it exits. Around a
    graph capture: the warm-up's random draws (drop path) leave the run's random stream untouched, so the
    graph's replays draw exactly what eager steps would have drawn, wherever the capture happens (before the
    first batch, or again after a resume)."""
    cuda = [device] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=cuda, device_type="cuda")


class TeacherForward:
    """The frozen teacher's forward for distillation: no_grad, autocast at the training dtype (off for
    float32), and on CUDA (unless ``graph=False``) replayed from one CUDA graph per input shape (the teacher
    never changes, so its ~800 kernels become one launch with no per-op host work). ``RMEETO_TEACHER_GRAPH=0``
    runs it eagerly.
    Returns logits the caller owns (a copy of the graph's output buffer)."""

    def __init__(self, model: nn.Module, amp_dtype: torch.dtype, graph: bool = True):
        self.model = model.eval().requires_grad_(False)
        self.amp_dtype = amp_dtype
        self.graphed = None
        if graph and next(model.parameters()).is_cuda and os.environ.get("RMEETO_TEACHER_GRAPH", "1") != "0":
            self.graphed = GraphedForward(model, autocast_dtype=None if amp_dtype == torch.float32 else amp_dtype)

    def capture(self, shape: tuple) -> None:
        """Capture the graph for float32 batches of ``shape`` now (from zeros) instead of at the first such
        batch; nothing when the teacher runs eagerly."""
        if self.graphed is not None:
            with torch.no_grad():
                self.graphed(torch.zeros(shape, device=next(self.model.parameters()).device))

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.graphed is not None:
            return self.graphed(images).clone()
        with torch.autocast(images.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype != torch.float32):
            return self.model(images)


class StudentGraph:
    """The student's forward and backward replayed from CUDA graphs (``torch.cuda.make_graphed_callables``),
    captured by :meth:`capture` (from zeros, before the data arrives) or else at the first training-mode call;
    other batch shapes (a batch left odd by an unreadable image) and eval mode run eagerly. Same kernels as
    the eager step, including drop path's random draws (graph-safe RNG; a capture leaves the RNG states as it
    found them, :func:`rng_kept`, so replays draw what eager steps would); what goes is the host work of
    ~3,000 launches per step, which leaves an H200 idle for a quarter of a Vim-S step.

    Under DDP (:meth:`for_ddp`) the capture happens *before* the student is wrapped, as PyTorch's CUDA-graph
    notes prescribe for partial-network capture with DistributedDataParallel: the graphed backward is one
    autograd node whose outputs are the parameter gradients, so DDP's per-parameter hooks fire after it and
    its bucketed all-reduce runs outside the graph (NCCL collectives are never captured)."""

    def __init__(self, model: nn.Module, amp_dtype: torch.dtype):
        self.model = model
        self.amp_dtype = amp_dtype
        self.eager_forward = model.forward  # bound before graphing replaces ``model.forward``
        self.shape: Optional[torch.Size] = None

    @classmethod
    def for_ddp(cls, model: nn.Module, amp_dtype: torch.dtype, sample_shape: tuple) -> "StudentGraph":
        """Capture now, for batches of ``sample_shape`` ([batch, 3, H, W]), and make ``model``'s own forward
        dispatch (graph replay in training mode at that shape, eager otherwise), so that a DDP wrapper built
        afterwards around ``model`` replays the graphs through ``module(images)``. Every rank captures."""
        graph = cls(model, amp_dtype)
        graph.capture(sample_shape)
        graphed_forward = model.forward  # make_graphed_callables' replacement

        def forward(images: torch.Tensor) -> torch.Tensor:
            if model.training and images.shape == graph.shape:
                return graphed_forward(images)
            return graph.eager_forward(images)

        model.forward = forward
        return graph

    def capture(self, shape: tuple) -> None:
        """Capture now, for training batches of ``shape`` (from zeros: the recorded kernels do not depend on the
        values), e.g. while the loader's workers produce the first batch."""
        was_training = self.model.training
        self.model.train()
        self._capture(torch.zeros(shape, device=next(self.model.parameters()).device))
        self.model.train(was_training)

    def _capture(self, images: torch.Tensor) -> None:
        kw = {}
        if "capture_error_mode" in inspect.signature(torch.cuda.make_graphed_callables).parameters:
            kw["capture_error_mode"] = "thread_local"  # a DataLoader's pin-memory thread may call CUDA meanwhile
        enabled = self.amp_dtype != torch.float32
        with rng_kept(images.device), \
                torch.autocast("cuda", dtype=self.amp_dtype, enabled=enabled, cache_enabled=False):
            torch.cuda.make_graphed_callables(self.model, (images.detach().clone(),), num_warmup_iters=3,
                                              allow_unused_input=True, **kw)
        self.shape = images.shape

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.model.training and self.shape is None:
            self._capture(images)
        if self.model.training and images.shape == self.shape:
            return self.model(images)
        return self.eager_forward(images)

    def __getattr__(self, name):  # train(), eval(), parameters() ... of the wrapped model
        return getattr(self.model, name)


def train_graph_enabled(cuda_graphs: bool, device: torch.device, distributed: bool, ddp_graphs: bool = False) -> bool:
    """Whether the student's step replays from CUDA graphs: a CUDA device, ``cuda_graphs`` on,
    ``RMEETO_TRAIN_GRAPH`` not ``0``, and one process, or several with ``ddp_graphs``."""
    return (cuda_graphs and device.type == "cuda" and (ddp_graphs or not distributed)
            and os.environ.get("RMEETO_TRAIN_GRAPH", "1") != "0")

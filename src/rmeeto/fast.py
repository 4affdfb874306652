"""Inference fast path behind one switch: ``rmeeto.fast.accelerate(model, mode)``.

Modes:
* ``"eager"``: the model as is.
* ``"cudagraph"`` (default on CUDA): the forward for a given input shape/dtype is captured once into a CUDA
  graph and replayed, which removes the per-kernel launch cost that dominates a 24-layer Vim at moderate batch
  sizes. Possible because the merged forward never synchronises with the host and its shapes are static
  for a given config (``MergeConfig.schedule``).
* ``"compile"``: ``torch.compile(model)`` in its default mode. The Triton kernels are custom ops it keeps whole;
  in 16-bit inference a whole block, merging or not, is one (its prepared launches, as eager mode runs them), so Inductor compiles
  only the embedding and the head. The first call compiles (13-17 s for a Vim-S on an H200 host).
* ``"compile+cudagraph"``: both (``torch.compile(model, mode="reduce-overhead")``).

``compile_backend`` picks the ``torch.compile`` backend of the compile modes (default ``"inductor"``; e.g.
``"aot_eager"`` to tell a Dynamo/AOTAutograd problem from an Inductor one).

The returned object is callable like the model (``fast(images) -> logits``) and is inference-only
(``torch.no_grad``). Outputs of ``cudagraph`` replays live in a static buffer that the next call overwrites:
``.clone()`` them if you keep them. A replay reads the input where it lies (no copy; see :class:`GraphedForward`),
in stream order as any CUDA op does: write to it on another stream only after synchronising.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional, Union

import torch
import torch.nn as nn
import torch.utils._pytree

from rmeeto.ops import embed as embed_ops

__all__ = ["accelerate", "compile_model", "MODES", "GraphedForward"]

MODES = ("auto", "eager", "cudagraph", "compile", "compile+cudagraph")


class GraphedForward:
    """Capture ``fn(x)`` into one CUDA graph per (shape, dtype) of ``x``; replay on later calls.

    A replay reads its input from the captured one, so each call first copies ``x`` there (one read and one write
    of the images: 19 us per 128 at 224 pixels on an H200), except where the capture's embedding read the input
    at an offset held on the device (:func:`rmeeto.ops.embed.graph_input`): then a call only points that
    offset at ``x`` (same strides, 16-byte aligned; otherwise it copies). That is taken only after a check at
    capture that nothing else in the graph reads the captured input: the graph replayed on a copy of it gives the
    same bits with the captured input's values made NaN (else every call copies, as without it)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], autocast_dtype: Optional[torch.dtype] = None,
                 warmup: int = 2):
        self.fn = fn
        self.autocast_dtype = autocast_dtype
        self.warmup = warmup
        self._graphs: dict = {}

    def _ctx(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        # no autocast weight cache: casts cached during warm-up (or by an enclosing autocast region) would be
        # captured by address and freed when that region ends
        return torch.autocast("cuda", dtype=self.autocast_dtype, cache_enabled=False)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype, x.device)
        entry = self._graphs.get(key)
        if entry is None:
            static_in = x.clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(self.warmup):  # let lazy init, autotuning and allocator settle outside the graph
                    with self._ctx():
                        self.fn(static_in)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            # thread_local: a DataLoader's pin-memory thread may call CUDA while this thread captures
            with embed_ops.graph_input(static_in) as source:
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    with self._ctx():
                        static_out = self.fn(static_in)
            # the source stays with the graph even where it is not pointed elsewhere: the graph reads its offset
            direct = source.used and self._reads_only_through(graph, static_in, static_out, source)
            entry = self._graphs[key] = (graph, static_in, static_out, source, direct)
        graph, static_in, static_out, source, direct = entry
        if direct and x.stride() == static_in.stride() and x.data_ptr() % 16 == 0:
            source.point_at(x)
        else:
            static_in.copy_(x)
            source.point_at(static_in)
        graph.replay()
        return static_out

    @staticmethod
    def _reads_only_through(graph, static_in: torch.Tensor, static_out, source) -> bool:
        """Whether the graph reads its input only through ``source``'s offset: replayed on the captured input
        and on a copy of it with the captured one made NaN, the same bits in every output tensor (any nesting of
        tuples, lists and dicts). Leaves ``static_in`` as it was and ``source`` pointing at it."""
        if not static_in.is_floating_point():
            return False
        outputs = [t for t in torch.utils._pytree.tree_leaves(static_out) if isinstance(t, torch.Tensor)]
        graph.replay()
        expected = [t.clone() for t in outputs]
        saved = static_in.clone()
        static_in.fill_(float("nan"))
        source.point_at(saved)
        graph.replay()
        same = all(torch.equal(t, e) for t, e in zip(outputs, expected))
        static_in.copy_(saved)
        source.point_at(static_in)
        return same


def compile_model(model: nn.Module, backend: Union[str, Callable] = "inductor", cudagraphs: bool = False):
    """``torch.compile(model)``: the default mode, or ``"reduce-overhead"`` (Inductor's CUDA graphs) with
    ``cudagraphs``. A mode is an Inductor setting: another ``backend`` cannot add CUDA graphs."""
    if backend == "inductor":
        return torch.compile(model, mode="reduce-overhead" if cudagraphs else None)
    if cudagraphs:
        raise ValueError(f"compile+cudagraph needs the 'inductor' compile backend, got {backend!r}")
    return torch.compile(model, backend=backend)


def accelerate(model: nn.Module, mode: str = "auto", autocast_dtype: Optional[torch.dtype] = None, *,
               compile_backend: Union[str, Callable] = "inductor") -> Callable:
    """Return an inference callable for ``model`` (already on its device, in eval mode).

    ``mode="auto"`` picks ``cudagraph`` when the model is on CUDA, else ``eager``. ``autocast_dtype`` (e.g.
    ``torch.float16``) runs the forward under autocast; leave None for a model already cast with ``.half()``.
    ``compile_backend``: the ``torch.compile`` backend of the compile modes.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not valid; choose from {', '.join(map(repr, MODES))}")
    model.eval()
    on_cuda = next(model.parameters()).is_cuda
    if mode == "auto":
        mode = "cudagraph" if on_cuda else "eager"
    if mode in ("cudagraph", "compile+cudagraph") and not on_cuda:
        raise ValueError(f"mode={mode!r} needs the model on a CUDA device")

    def ctx():
        if autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda" if on_cuda else "cpu", dtype=autocast_dtype)

    if mode == "eager":
        @torch.no_grad()
        def run(x):
            with ctx():
                return model(x)
        return run
    if mode == "cudagraph":
        return GraphedForward(model, autocast_dtype)
    compiled = compile_model(model, compile_backend, cudagraphs=mode == "compile+cudagraph")

    @torch.no_grad()
    def run_compiled(x):
        with ctx():
            return compiled(x)

    return run_compiled

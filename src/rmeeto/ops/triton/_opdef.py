"""Inference-only custom ops with the least dispatch cost: what torch.compile traces in place of a whole mixer,
block or merging step (:mod:`rmeeto.ops.triton.mixer`, :mod:`rmeeto.ops.triton.merge`).

``torch.library.custom_op`` wraps every call in Python layers (an autograd kernel that redispatches, a
dynamo-disabled backend wrapper, an output-aliasing check): ~25-65 us more per call than the function itself on
this project's CPU proxy (the host of a Vim-S forward with launches made no-ops), for 24-48 calls per forward. An op
defined here is a plain ``torch.library.Library`` definition whose CPU and CUDA kernel is the Python function
(run with torch.compile's frame hook off): the dispatcher calls it directly. No autograd formula is registered: these ops serve forwards through
which no gradient flows (their callers check), and their outputs are fresh tensors (they alias no input).
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["inference_op"]

_LIB = torch.library.Library("rmeeto", "FRAGMENT")


def inference_op(name: str, fake: Callable) -> Callable[[Callable], Callable]:
    """Decorator: define ``rmeeto::<name>`` with the decorated function's signature (annotations as for
    ``torch.library.custom_op``) as its CPU and CUDA kernel and ``fake`` as its fake (meta) kernel; returns the
    op's ``OpOverload`` (call it as the function)."""

    def define(fn: Callable) -> Callable:
        _LIB.define(name + torch.library.infer_schema(fn, mutates_args=()))
        disabled = None

        def kernel(*args):
            # run with torch.compile's frame hook off (torch.compiler.disable, made on first use: it imports
            # dynamo). Called from a compiled graph with it on, every Python call in the kernel cost 5-8 times
            # its eager time (the launches' host work 1.0 -> 4.0 ms per forward on the CPU proxy)
            nonlocal disabled
            if disabled is None:
                disabled = torch.compiler.disable(fn)
            return disabled(*args)

        for key in ("CPU", "CUDA"):
            _LIB.impl(name, kernel, key)
        torch.library.register_fake(f"rmeeto::{name}", fake, lib=_LIB)
        return getattr(torch.ops.rmeeto, name).default

    return define

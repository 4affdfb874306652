"""rmeeto's custom ops registered with Inductor as fallbacks before it lowers a graph: ``@lower_as_fallback``.

Inductor has no lowering for a custom op; on first meeting one it registers an *implicit fallback* (the compiled
code calls the op). Before registering, PyTorch 2.10 and 2.11 format a log line holding ``str()`` of every argument,
whether or not INFO logging is on (2.14 formats it only when logged), and ``str()`` of an IR node prints its
inputs' nodes, recursively. A block op takes two outputs of the block before it (hidden states and residual), so
that string doubles per block: compiling a 24-block Vim did not finish in 150 s on PyTorch 2.11 (session 20,
RESULTS.md), where 2.14 takes seconds. Registered here first, the op goes the same way (:func:`make_fallback`,
with the layout constraint the implicit path would give it, from the op's tags) and the line is never built.

Registration waits for ``torch._inductor.lowering`` to be imported (importing Inductor costs seconds, and eager
users never need it); a failure (an Inductor API that moved) leaves the op to the implicit path, as before.

``@library_op`` defines rmeeto's ops through a plain ``torch.library.Library``: a compiled graph's call then goes
from the dispatcher to the op's Python kernel directly, where a ``torch.library.custom_op`` adds a checking wrapper
in Python, and for an op without a backward an autograd layer and a redispatch too (the wrapper alone was 47% of a
compiled merged Vim-Ti forward's host time under cProfile on the H200 host, PyTorch 2.11:
benchmarks/results/s23/call3_hp_compile.txt).
"""

from __future__ import annotations

import sys
from typing import Any, Callable, TypeVar

from rmeeto._lazy import after_import

__all__ = ["library_op", "lower_as_fallback", "registered"]

_LOWERING = "torch._inductor.lowering"
_PENDING: list = []
_HOOKED = False

Op = TypeVar("Op")


def _overload(op: Any):
    """The OpOverload of an op: of a ``torch.library.custom_op`` object, or an OpOverload itself."""
    return getattr(op, "_opoverload", op)


def _register(op: Any) -> None:
    from torch._library.utils import get_layout_constraint_tag

    lowering = sys.modules[_LOWERING]  # (also while its package is still binding it, right after its import ran)

    target = _overload(op)
    if target in lowering.lowerings:
        return
    tag = get_layout_constraint_tag(target, with_default=True)  # as graph.py's implicit fallback decides it
    lowering.make_fallback(target, layout_constraint=lowering.tag_to_layout_constraint(tag), warn=False)


def _register_pending() -> None:
    while _PENDING:
        op = _PENDING.pop()
        try:
            _register(op)
        except Exception:  # noqa: BLE001  an Inductor that changed: the implicit fallback still serves
            pass


def lower_as_fallback(op: Op) -> Op:
    """Decorator over an op (an OpOverload or a ``torch.library.custom_op`` object): register it as an Inductor
    fallback once Inductor's lowering table exists (now if it already does). Returns ``op`` unchanged."""
    global _HOOKED
    _PENDING.append(op)
    if _LOWERING in sys.modules:
        _register_pending()
    elif not _HOOKED:
        _HOOKED = True
        after_import(_LOWERING, _register_pending)
    return op


def registered(op: Any) -> bool:
    """Whether Inductor's lowering table holds ``op`` (False while Inductor is not imported)."""
    lowering = sys.modules.get(_LOWERING)
    return lowering is not None and _overload(op) in lowering.lowerings


def _fragment(name: str):
    """A torch.library fragment for the op ``rmeeto::<name>`` alone. One an earlier import of the defining module
    made is destroyed first (as ``torch.library.custom_op`` does), so a re-imported module (``importlib.reload``,
    a test that forgets rmeeto's modules) defines its ops again instead of failing on a duplicate."""
    import torch

    try:
        from torch._library.custom_ops import get_library_allowing_overwrite
    except ImportError:  # a PyTorch without it: a plain fragment (a second import of the module then fails)
        return torch.library.Library("rmeeto", "FRAGMENT")
    return get_library_allowing_overwrite("rmeeto", name)


KERNELS: dict = {}  # op name -> its Python kernel (for tools that time the dispatch against a direct call)


def library_op(name: str) -> Callable[[Callable], Any]:
    """Decorator: define ``fn`` as the op ``rmeeto::<name>`` through a plain ``torch.library.Library`` (schema
    from its annotations, no input mutated, one kernel for every device) and register it as an Inductor fallback;
    returns the op's OpOverload. Its fake (``torch.library.register_fake(op)``) and, where a gradient flows, its
    autograd formula (``torch.library.register_autograd(op, ...)``) are registered apart."""
    import torch

    def define(fn: Callable):
        lib = _fragment(name)
        lib.define(name + torch.library.infer_schema(fn, mutates_args=()))
        lib.impl(name, fn, "CompositeExplicitAutograd")
        KERNELS[name] = fn
        return lower_as_fallback(getattr(torch.ops.rmeeto, name).default)

    return define

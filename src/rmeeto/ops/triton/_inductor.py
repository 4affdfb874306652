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
"""

from __future__ import annotations

import sys
from typing import Any, TypeVar

from rmeeto._lazy import after_import

__all__ = ["lower_as_fallback", "registered"]

_LOWERING = "torch._inductor.lowering"
_PENDING: list = []
_HOOKED = False

Op = TypeVar("Op")


def _overload(op: Any):
    """The OpOverload of a ``torch.library.custom_op`` object (or an OpOverload itself)."""
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
    """Decorator over ``torch.library.custom_op(...)``: register the op as an Inductor fallback once Inductor's
    lowering table exists (now if it already does). Returns ``op`` unchanged."""
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

"""Post-import hooks: run a callback right after a module is first imported, so that what only matters once a
package is loaded (registering the Vim models with timm, the ViT merge patch) costs nothing until then.

    after_import("timm", callback)   # now if timm is already imported, else right after `import timm` runs

Importing timm takes ~3 s on a 2-core machine (it imports torchvision's models); ``import rmeeto`` and every CLI
call paid it before, for the ViT backbones only.
"""

from __future__ import annotations

import importlib.abc
import sys
from typing import Callable

__all__ = ["after_import"]


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: asks the finders after it for ``name``'s spec and gives that spec's loader (a new object
    per spec) an ``exec_module`` that runs the module, then the callbacks. A spec that is only looked up
    (``importlib.util.find_spec``, as libraries do to test for a package) and never executed leaves the hook in
    place for the real import. A failing callback never fails the import."""

    def __init__(self, name: str):
        self.name = name
        self.callbacks: list[Callable[[], None]] = []
        self.busy = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name or self.busy:
            return None
        self.busy = True
        try:  # the spec the import system would find without this hook (path, editable-install finders ...)
            spec = None
            for finder in [f for f in sys.meta_path if f is not self]:
                find = getattr(finder, "find_spec", None)
                spec = find(fullname, path, target) if find is not None else None
                if spec is not None:
                    break
        finally:
            self.busy = False
        loader = getattr(spec, "loader", None)
        run = getattr(loader, "exec_module", None)
        if run is None:
            return None  # the import goes on as if this finder were not there

        def exec_module(module):
            run(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
                _run(self.callbacks)

        loader.exec_module = exec_module
        return spec


def _run(callbacks: list[Callable[[], None]]) -> None:
    for callback in callbacks:
        try:
            callback()
        except Exception:  # never fail the user's import
            pass


def after_import(name: str, callback: Callable[[], None]) -> None:
    """Call ``callback()`` once the module ``name`` (a package's submodule too) is imported: now if it already is,
    else right after its first import has run (a one-shot hook in ``sys.meta_path``). Exceptions from the callback
    are dropped."""
    if name in sys.modules:
        _run([callback])
        return
    # by class name: a hook from an earlier copy of this module (rmeeto re-imported) is reused, not doubled
    hook = next((f for f in sys.meta_path if type(f).__name__ == "_AfterImport" and getattr(f, "name", None) == name),
                None)
    if hook is None:
        hook = _AfterImport(name)
        sys.meta_path.insert(0, hook)
    hook.callbacks.append(callback)

"""Layering: every module of src/rmeeto imports on its own, and no two modules import each other (directly or
through a chain), counting imports inside functions too (a late import that dodges a cycle is still a cycle)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "rmeeto"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = sorted(_module_name(p) for p in PACKAGE.rglob("*.py"))
RUNNABLE = [m for m in MODULES if not m.endswith("__main__")]  # importing __main__ runs the CLI


def _imports(path: Path, name: str) -> set[str]:
    """rmeeto modules that ``path`` imports anywhere in its body (module level or inside functions)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # ``from pkg import sub`` depends on the submodule ``pkg.sub`` (its parent package is imported by
            # Python for any submodule anyway); other names depend on ``pkg`` itself
            subs = {f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in MODULES}
            found.update(subs)
            if len(subs) < len(node.names):
                found.add(module)
    return {m for m in found if m in MODULES and m != name}


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        graph[name] = _imports(path, name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_in_src():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles (late imports included): " + "; ".join(" <-> ".join(c) for c in cycles)


def test_every_module_imports_on_its_own():
    # one interpreter (torch is imported once), and before each module every rmeeto module is forgotten, so
    # each import starts from nothing: a module that only works after another was imported fails here
    code = (
        "import importlib, sys, traceback\n"
        "import torch\n"
        f"failed = []\n"
        f"for name in {RUNNABLE!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'rmeeto' or m.startswith('rmeeto.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception:\n"
        "        failed.append(name + ': ' + traceback.format_exc().strip().splitlines()[-1])\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"modules that do not import on their own:\n{proc.stdout}{proc.stderr[-2000:]}"


def test_import_rmeeto_leaves_timm_unimported_and_timm_still_sees_the_models():
    """``import rmeeto`` does not import timm (~3 s of start-up for every CLI call and subprocess); once timm is
    imported, ``timm.create_model`` builds the Vim models and ``apply_merge`` takes a timm ViT, whichever of
    the two packages comes first. A spec lookup of timm alone (as libraries test for a package) leaves the
    hook for the real import."""
    after = (
        "import importlib.util, sys, rmeeto\n"
        "assert 'timm' not in sys.modules, 'import rmeeto imported timm'\n"
        "assert importlib.util.find_spec('timm') is not None and 'timm' not in sys.modules\n"
        "vit = rmeeto.create_model('vit_test_patch4_16')\n"  # imports timm: the hook runs here
        "rmeeto.apply_merge(vit, rmeeto.MergeConfig(num_merged=2, interval=1))\n"
        "assert type(vit).__name__ == 'MergingVisionTransformer', type(vit)\n"
        "import timm\n"
        "assert type(timm.create_model('vim_test_patch4_16')).__name__ == 'VisionMamba'\n"
        "assert not [f for f in sys.meta_path if type(f).__name__ == '_AfterImport' and f.name == 'timm']\n"
    )
    before = ("import timm, rmeeto\n"
              "assert type(timm.create_model('vim_test_patch4_16')).__name__ == 'VisionMamba'\n"
              "vit = rmeeto.apply_merge(timm.create_model('vit_tiny_patch16_224', img_size=32, patch_size=16),\n"
              "                         rmeeto.MergeConfig(num_merged=1, interval=1))\n"
              "assert type(vit).__name__ == 'MergingVisionTransformer', type(vit)\n")
    for code in (after, before):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(SRC)})
        assert proc.returncode == 0, proc.stderr[-2000:]


def test_cycle_finder_finds_a_cycle():
    # the check above could pass by finding nothing at all: make sure it sees a planted loop
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]

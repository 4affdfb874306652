"""Compare the fused merge of this checkout with another version of ``rmeeto/ops/triton/merge.py`` on a GPU:
the share of batch elements whose plan (destination map) is bitwise the same, and whether the merged
streams and sizes are bitwise equal, at the merging-layer shapes of Vim-Ti/S/B and VideoMamba-S, on random
and tie-heavy metrics, fp16 / bf16 / fp32.

    git show 62ed9c6:src/rmeeto/ops/triton/merge.py > /tmp/old_merge.py
    PYTHONPATH=src python benchmarks/compare_merge_plans.py /tmp/old_merge.py

A kernel change that moves a float32 rounding (for example the inverse row norms) may change a plan only where
two scores are within one rounding step of each other; anything far below 100% is a bug.
"""

from __future__ import annotations

import argparse
import importlib.util

import torch

from rmeeto.merge import plan_cls_index
from rmeeto.ops.triton import merge as new

# (batch, tokens, channels, class index, r): Vim-Ti / S / B first merging layers, a late Vim-Ti layer, video
SHAPES = [(128, 197, 192, 98, 5), (128, 197, 384, 98, 11), (64, 197, 768, 98, 11), (128, 147, 192, 73, 71),
          (16, 1569, 384, 0, 88)]


class _Unregistered:
    """Stands in for an op (``torch.library.custom_op``, in an older merge.py) while the other module loads (its
    op names are taken)."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def register_fake(self, fn):
        return fn

    def register_autograd(self, *args, **kwargs):
        pass


def load(path: str):
    """The merge.py at ``path`` as a module whose ops are left unregistered (plain functions)."""
    from rmeeto.ops.triton import _inductor

    spec = importlib.util.spec_from_file_location("other_merge", path)
    module = importlib.util.module_from_spec(spec)
    stand_ins = [(torch.library, "custom_op", lambda name, **kwargs: _Unregistered),
                 (_inductor, "library_op", lambda name: _Unregistered),
                 (torch.library, "register_fake", lambda op, *args, **kwargs: (lambda fn: fn)),
                 (torch.library, "register_autograd", lambda *args, **kwargs: None)]
    real = [(owner, name, getattr(owner, name)) for owner, name, _ in stand_ins]
    for owner, name, stand_in in stand_ins:
        setattr(owner, name, stand_in)
    try:
        spec.loader.exec_module(module)
    finally:
        for owner, name, value in real:
            setattr(owner, name, value)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("other", help="path of the other merge.py")
    args = ap.parse_args()
    old = load(args.other)
    torch.manual_seed(0)
    with torch.no_grad():
        for B, L, C, cls, r in SHAPES:
            for dtype in (torch.float16, torch.bfloat16, torch.float32):
                for ties in (False, True):
                    if ties:
                        m = torch.randint(0, 3, (B, L, C), device="cuda").to(dtype)
                    else:
                        m = torch.randn(B, L, C, device="cuda", dtype=dtype)
                    h, res = m, torch.randn(B, L, C, device="cuda")
                    new_cls = plan_cls_index(cls, L, r, True)
                    d_new = new.match_plan(m, cls, r, new_cls, True)[0]
                    d_old = old.match_plan(m, cls, r, new_cls, True)[0]
                    same_plan = (d_new == d_old).all(-1).float().mean().item()
                    (h1, r1), s1 = new.match_merge_fused(h, res, None, m, cls, r, new_cls, True)
                    (h2, r2), s2 = old.match_merge_fused(h, res, None, m, cls, r, new_cls, True)
                    same_out = torch.equal(h1, h2) and torch.equal(r1, r2) and torch.equal(s1, s2)
                    print(f"B={B} L={L} C={C} r={r} {str(dtype)[6:]:8s} {'ties ' if ties else 'random'}: "
                          f"plan bitwise equal for {same_plan:.1%} of the batch, outputs bitwise equal: {same_out}",
                          flush=True)


if __name__ == "__main__":
    main()

"""The prepared inference paths on CUDA (rmeeto.ops.triton.mixer.MixerPlan for the mixers and their blocks' norms,
rmeeto.ops.triton.merge.MergeNormPlan for the merging steps): whole Vim models, unmerged and merged, give the
general path's bits with them, eager and graphed, at two batch sizes, with every mixer call of an eager forward
taking its plan and the plans' launches on the cached launcher's fast path (on Triton 3.6 calling its C
function directly, with addresses; the same bits with that off). Its logic is also tested on CPU
under Triton's interpreter (tests/ops/test_interpreted.py)."""

import pytest
import torch

import rmeeto
from rmeeto.fast import accelerate
from rmeeto.ops import policy
from rmeeto.ops.triton import _launch
from rmeeto.ops.triton import merge as tmerge
from rmeeto.ops.triton import mixer as tm

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _model(name: str, merged: bool):
    torch.manual_seed(0)
    model = rmeeto.create_model(name).cuda().half().eval()
    with torch.no_grad():  # away from the init's constants (D = 1, equal A rows), so a swapped operand would show
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    if merged:
        rmeeto.apply_merge(model, rmeeto.MergeConfig.paper(name))
    return model


def _forward(model, x, plan: bool, graphed: bool = False):
    policy.set_fused("plan", plan)
    try:
        with torch.no_grad():
            return (accelerate(model, "cudagraph") if graphed else model)(x)
    finally:
        policy.set_fused("plan", True)


@pytest.mark.parametrize("merged", [False, True], ids=["unmerged", "merged"])
@pytest.mark.parametrize("name", ["vim_tiny_patch16_224", "vim_small_patch16_224", "vim_base_patch16_224"])
def test_plan_gives_the_general_paths_bits(name, merged, monkeypatch):
    model = _model(name, merged)
    calls, direct = [], []
    real, real_direct = tm.MixerPlan.__call__, tm.MixerPlan._call_direct

    def spy(self, *args):
        calls.append(self)
        return real(self, *args)

    def spy_direct(self, *args):
        direct.append(self)
        return real_direct(self, *args)

    monkeypatch.setattr(tm.MixerPlan, "__call__", spy)
    monkeypatch.setattr(tm.MixerPlan, "_call_direct", spy_direct)
    depth = len(model.layers)
    for batch in (8, 3):
        x = torch.randn(batch, 3, 224, 224, device="cuda").half()
        ref = _forward(model, x, plan=False)
        calls.clear()
        with torch.no_grad():  # (switching leaves the plans of the switches' last generation: not between calls)
            for _ in range(3):  # the first call makes the launchers, the later ones take their direct path
                got = model(x)
                assert torch.equal(got, ref), (batch, (got.float() - ref.float()).abs().max().item())
        assert len(calls) == 3 * depth, "a mixer call took the general path"
        if _launch._direct_supported():  # the first call makes the launchers; the later ones pass addresses
            assert len(direct) == 2 * depth, len(direct)
        direct.clear()
        plans = set(calls)
        assert len(plans) == depth  # one plan per layer for this input signature, reused by later calls
        for plan in plans:
            for launcher in (plan.conv, plan.proj, plan.scan):
                assert launcher is not None and launcher.entry is not None, launcher
                # on a Triton whose launcher the direct path was checked against, the C function called directly
                assert (launcher._direct is not None) == _launch._direct_supported(), launcher
        policy.set_direct_launch(False)  # the launcher's Python layer, tensors passed as tensors: the same bits
        try:
            with torch.no_grad():
                assert torch.equal(model(x), ref)
        finally:
            policy.set_direct_launch(True)
    if merged:  # the merging steps' prepared launches too
        merge_plans = [p for b in model.layers for p in b.__dict__.get("_merge_plans", {}).values() if p is not None]
        assert len(merge_plans) >= 11
        assert all(p.match.entry is not None and p.merge.entry is not None for p in merge_plans)
    assert torch.equal(_forward(model, x, plan=True, graphed=True), ref)


def test_blocks_take_the_plan_with_their_norm(monkeypatch):
    """Merged Vim-Ti: every plain block's residual add + RMSNorm goes through its plan, every merging block's
    matching and merge + add + norm through its prepared merge (rmeeto.ops.triton.merge.MergeNormPlan), then its
    mixer's plan; the logits are the general path's bits."""
    model = _model("vim_tiny_patch16_224", True)
    adds, calls, merges = [], [], []
    real_add, real_call, real_merge = tm.MixerPlan.add_norm, tm.MixerPlan.__call__, tmerge.MergeNormPlan.__call__
    monkeypatch.setattr(tm.MixerPlan, "add_norm", lambda self, *a: adds.append(self) or real_add(self, *a))
    monkeypatch.setattr(tm.MixerPlan, "__call__", lambda self, *a: calls.append(self) or real_call(self, *a))
    monkeypatch.setattr(tmerge.MergeNormPlan, "__call__", lambda self, *a: merges.append(self) or real_merge(self, *a))
    x = torch.randn(4, 3, 224, 224, device="cuda").half()
    ref = _forward(model, x, plan=False)
    assert not (adds or calls or merges)
    got = _forward(model, x, plan=True)
    assert torch.equal(got, ref)
    merging = sum(type(b).__name__ == "MergingBlock" for b in model.layers)
    assert merging == 11 and len(merges) == merging
    assert len(calls) == len(model.layers) and len(adds) == len(model.layers) - merging

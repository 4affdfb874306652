"""Programmatic dependent launch of a block's forward kernels (``RMEETO_PDL=1``, rmeeto.ops.triton._pdl): it changes
when a kernel's programs start, never what they compute, so whole models (Vim-Ti unmerged, Vim-S merged, fp16)
give the same logits bit for bit with it on and off, eager (general path and prepared blocks) and graphed. On a
GPU older than Hopper it stays off."""

import pytest
import torch

import rmeeto
from rmeeto.fast import accelerate
from rmeeto.ops import policy
from rmeeto.ops.triton import _launch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _logits(model, x, pdl: bool, mode: str):
    policy.set_pdl(pdl)
    policy.set_fused("plan", mode != "general")
    try:
        with torch.no_grad():
            return (accelerate(model, "cudagraph") if mode == "graphed" else model)(x).float()
    finally:
        policy.set_pdl(False)
        policy.set_fused("plan", True)


@pytest.mark.parametrize("name,merged", [("vim_tiny_patch16_224", False), ("vim_small_patch16_224", True)])
def test_same_logits_with_and_without_pdl(name, merged):
    policy.set_pdl(True)
    try:
        on = bool(_launch.pdl_meta())
    finally:
        policy.set_pdl(False)
    assert on == (torch.cuda.get_device_capability() >= (9, 0))
    assert _launch.pdl_meta() == {}
    torch.manual_seed(0)
    model = rmeeto.create_model(name).cuda().half().eval()
    if merged:
        rmeeto.apply_merge(model, rmeeto.MergeConfig.paper(name))
    x = torch.randn(32, 3, 224, 224, device="cuda").half()
    for mode in ("general", "plan", "graphed"):
        ref = _logits(model, x, False, mode)
        got = _logits(model, x, True, mode)
        assert torch.equal(got, ref), mode

"""The token embedding's kernels on CUDA (rmeeto.ops.triton.embed): the same bits as the PyTorch ops they
replace, alone and in whole models (unmerged and merged Vim, eager and graphed, the training step's gradients).
Their logic is also tested on CPU under Triton's interpreter (tests/ops/test_interpreted.py)."""

import pytest
import torch

import rmeeto
from rmeeto.fast import accelerate
from rmeeto.ops import embed, policy

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_embed_kernels_equal_pytorch(dtype):
    torch.manual_seed(0)
    for b, c, h, w, p, layout in ((8, 3, 224, 224, 16, "contiguous"), (3, 3, 224, 224, 16, "channels_last"),
                                  (2, 3, 64, 96, 8, "sliced"), (2, 1, 32, 32, 4, "contiguous")):
        x = torch.randn(b, c, h, w + (6 if layout == "sliced" else 0), device="cuda").to(dtype)
        if layout == "sliced":
            x = x[..., 3:w + 3]
        elif layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        assert torch.equal(embed.patch_rows(x, p), embed.patch_rows_torch(x, p)), (b, c, h, w, p, layout)
    for n, e, index in ((196, 192, 98), (196, 384, 98), (196, 768, 0), (196, 384, 196), (100, 40, 7)):
        t = torch.randn(8, n, e, device="cuda").to(dtype)
        for pdtype in (dtype, torch.float32):
            cls = torch.randn(1, 1, e, device="cuda").to(pdtype)
            pos = torch.randn(1, n + 1, e, device="cuda").to(pdtype)
            got = embed.insert_cls_add_pos(t, cls, pos, index)
            assert torch.equal(got, embed.insert_cls_add_pos_torch(t, cls, pos, index)), (n, e, index, pdtype)


@pytest.mark.parametrize("merged", [False, True])
def test_model_logits_and_gradients_unchanged_by_the_embed_kernels(merged):
    """Vim-Ti fp16 logits (eager and graphed) and a bf16 training step's gradients with the embed kernels on
    equal those with them off, bit for bit (a training step takes the patch kernel: the image needs no
    gradient; the class-token insert stays in PyTorch there, its parameters need one)."""
    torch.manual_seed(0)
    model = rmeeto.create_model("vim_tiny_patch16_224").cuda()
    if merged:
        rmeeto.apply_merge(model, rmeeto.MergeConfig.paper("vim_tiny_patch16_224"))
    x = torch.randn(16, 3, 224, 224, device="cuda")
    outs = {}
    try:
        for on in (True, False):
            policy.set_fused("embed", on)
            model.eval()
            half = model.half()
            with torch.no_grad():
                eager = half(x.half()).float()
                graphed = accelerate(half, "cudagraph")(x.half()).float()
            model.float().train()
            model.zero_grad(set_to_none=True)
            torch.manual_seed(1)  # the same drop-path draws both times
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(x).float().logsumexp(-1).mean()
            loss.backward()
            grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
            outs[on] = (eager, graphed, grads)
    finally:
        policy.set_fused("embed", True)
    assert torch.equal(outs[True][0], outs[False][0])
    assert torch.equal(outs[True][1], outs[False][1])
    assert outs[True][2].keys() == outs[False][2].keys() and "patch_embed.proj.weight" in outs[True][2]
    for k, g in outs[True][2].items():
        assert torch.equal(g, outs[False][2][k]), k

"""The token embedding's kernels on CUDA (rmeeto.ops.triton.embed): the copy kernels give the same bits as the
PyTorch ops they replace, alone and in whole models (unmerged and merged Vim, eager and graphed, the training step's
gradients); the fused patch GEMM is within rounding of them, as close to the float32 model, and lets a CUDA graph
read its input where it lies. Their logic is also tested on CPU under Triton's interpreter
(tests/ops/test_interpreted.py)."""

import pytest
import torch

import rmeeto
from rmeeto.fast import GraphedForward, accelerate
from rmeeto.ops import embed, policy
from rmeeto.ops.triton import embed as te

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
    policy.set_fused("embed_gemm", False)  # the copy kernels against the PyTorch ops (the GEMM: tests below)
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
        policy.set_fused("embed_gemm", True)
    assert torch.equal(outs[True][0], outs[False][0])
    assert torch.equal(outs[True][1], outs[False][1])
    assert outs[True][2].keys() == outs[False][2].keys() and "patch_embed.proj.weight" in outs[True][2]
    for k, g in outs[True][2].items():
        assert torch.equal(g, outs[False][2][k]), k


def _gemm_within_rounding(got, x, w, bias, cls, pos, index, p, dtype):
    """Every patch token of ``got`` within one rounding of the patch GEMM (float32 sums in any order, the bias
    added) plus one of the position add; the class-token row that of the PyTorch insert bit for bit."""
    a = embed.patch_rows_torch(x, p).to(dtype).double()
    wd = w.reshape(w.shape[0], -1).to(dtype).double()
    lin = a @ wd.T + bias.to(dtype).double()
    bound = a.shape[-1] * 2.0 ** -24 * (a.abs() @ wd.abs().T)
    fi = torch.finfo(dtype)
    spacing = lambda v: (v.abs() * fi.eps).clamp_min(fi.tiny * fi.eps)
    n = lin.shape[1]
    rows = [r for r in range(n + 1) if r != index]
    g = got.double()[:, rows]
    exact = lin + pos.reshape(n + 1, -1).to(dtype).double()[rows]
    ok = bool(((g - exact).abs() <= 0.5 * spacing(lin) + 0.5 * spacing(g) + bound).all())
    ref = embed.insert_cls_add_pos_torch(lin.to(dtype), cls, pos, index)
    return ok and got.dtype == dtype and torch.equal(got[:, index], ref[:, index])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_patch_gemm_within_one_rounding(dtype):
    """The fused patch embedding at Vim-Ti / S / B widths (class token in the middle, first, last; row counts that
    fill the row tiles and not), 16-bit images and float32 images under autocast (rounded as read): within one
    rounding of the GEMM and one of the position add; the dispatch takes it in inference, not with a gradient."""
    torch.manual_seed(0)
    for b, e, index, autocast in ((8, 192, 98, False), (5, 384, 0, False), (3, 768, 196, False), (4, 384, 98, True)):
        x = torch.randn(b, 3, 224, 224, device="cuda")
        if not autocast:
            x = x.to(dtype)
        wdt = torch.float32 if autocast else dtype
        w = (torch.randn(e, 3, 16, 16, device="cuda") / 768 ** 0.5).to(wdt)
        bias = torch.randn(e, device="cuda").to(wdt)
        cls, pos = torch.randn(1, 1, e, device="cuda"), torch.randn(1, 197, e, device="cuda")
        with torch.no_grad(), torch.autocast("cuda", dtype=dtype, enabled=autocast):
            assert embed.embed_tokens_dtype(x, w, bias, cls, pos) == dtype
            got = embed.embed_tokens(x, w, bias, cls, pos, index, 16)
        assert _gemm_within_rounding(got, x, w, bias, cls, pos, index, 16, dtype), (b, e, index, autocast)
    w.requires_grad_(True)
    assert embed.embed_tokens_dtype(x, w, bias, cls, pos) is None


@pytest.mark.parametrize("merged", [False, True])
def test_model_logits_with_the_patch_gemm(merged):
    """Vim-Ti fp16 logits with the fused patch GEMM (taken once per forward, not with its switch off) as close to
    the float32 model's as with cuBLAS (within 10% more error), the same top-1 for 90% of the images, and eager
    equal to graphed bit for bit."""
    torch.manual_seed(0)
    model = rmeeto.create_model("vim_tiny_patch16_224").cuda().eval()
    if merged:
        rmeeto.apply_merge(model, rmeeto.MergeConfig.paper("vim_tiny_patch16_224"))
    x = torch.randn(16, 3, 224, 224, device="cuda")
    calls, real = [], te.embed_tokens

    def spy(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    with torch.no_grad():
        ref = model(x).float()
        half, xh = model.half(), x.half()
        te.embed_tokens = spy
        try:
            on = half(xh).float()
            policy.set_fused("embed_gemm", False)
            off = half(xh).float()
        finally:
            te.embed_tokens = real
            policy.set_fused("embed_gemm", True)
        graphed = accelerate(half, "cudagraph")(xh).float()
    err_on, err_off = (on - ref).norm() / ref.norm(), (off - ref).norm() / ref.norm()
    assert len(calls) == 1, "the fused GEMM was not taken once (or was taken with its switch off)"
    assert err_on <= 1.1 * err_off + 1e-4, (err_on.item(), err_off.item())
    assert (on.argmax(-1) == off.argmax(-1)).float().mean() >= 0.9
    assert torch.equal(on, graphed)


def test_graph_reads_its_input_where_it_lies():
    """A graphed Vim-Ti reads each call's image at the offset the fused embedding holds on the device (no copy into
    the captured input): calls on several images, one changed in place between calls, equal eager bit
    for bit; an image of other strides (channels-last) or not 16-byte aligned is copied in instead, equally right;
    a forward that reads its input elsewhere too is caught by the capture's check and always copies."""
    torch.manual_seed(0)
    model = rmeeto.create_model("vim_tiny_patch16_224").cuda().eval().half()
    images = [torch.randn(4, 3, 224, 224, device="cuda").half() for _ in range(3)]
    with torch.no_grad():
        eager = lambda t: model(t).float()
        g = accelerate(model, "cudagraph")
        for t in images + images[::-1]:
            assert torch.equal(g(t).float(), eager(t))
        (_, _, _, source, direct), = g._graphs.values()
        assert source.used and direct, "the capture did not read its input through the offset"
        images[1].mul_(-1)  # changed in place: the next call must read the new values
        assert torch.equal(g(images[1]).float(), eager(images[1]))
        cl = images[0].contiguous(memory_format=torch.channels_last)
        assert torch.equal(g(cl).float(), eager(cl))
        flat = torch.empty(images[2].numel() + 1, device="cuda", dtype=torch.half)
        odd = flat[1:].view_as(images[2]).copy_(images[2])
        assert odd.data_ptr() % 16 != 0
        assert torch.equal(g(odd).float(), eager(odd))
        assert torch.equal(g(images[2]).float(), eager(images[2]))
        both = GraphedForward(lambda t: model(t) + t.float().mean())
        for t in images:
            assert torch.equal(both(t), model(t) + t.float().mean())
        (_, _, _, source, direct), = both._graphs.values()
        assert source.used and not direct


def test_training_step_does_not_take_the_patch_gemm(training_step_ab):
    """With gradients flowing the embedding keeps the cut-out, cuBLAS and the insert: a bf16 training step's loss
    and gradients are equal bit for bit with the switch on and off."""
    training_step_ab("embed_gemm")  # the fixture asserts

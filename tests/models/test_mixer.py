"""The bidirectional mixer and the whole Vim equal a direct, loop-by-loop recomputation of the official function."""

import pytest
import torch

import rmeeto
from rmeeto.models.vim import BiMambaMixer

from _official import naive_mixer, randomize


def test_mixer_equals_per_step_recomputation():
    torch.manual_seed(0)
    m = BiMambaMixer(8, d_state=4)
    randomize(m, 1)
    with torch.no_grad():
        m.A_log.copy_(torch.log(torch.arange(1, 5).float()).repeat(16, 1) + 0.1 * torch.randn(16, 4))
        m.A_b_log.copy_(m.A_log.flip(-1))
    hidden = torch.randn(2, 9, 8)
    out, _ = m(hidden)
    for b in range(2):
        ref = naive_mixer(m, hidden[b])
        assert torch.allclose(out[b].double(), ref, rtol=1e-4, atol=1e-5)
    # both directions matter: dropping the backward branch (the official slow-path bug) changes the result
    m2 = BiMambaMixer(8, d_state=4)
    m2.load_state_dict(m.state_dict())
    with torch.no_grad():
        m2.out_proj.weight.zero_()
    assert not torch.allclose(out, m2(hidden)[0])


def naive_vim(model, image):
    """Whole Vim forward for one image with the naive mixer: patchify, middle cls, residual stream, head."""
    E = model.embed_dim
    p = model.patch_embed.patch_size
    w = model.patch_embed.proj.weight.double()
    patches = image.double().unfold(1, p, p).unfold(2, p, p)  # [C, gh, gw, p, p]
    patches = patches.permute(1, 2, 0, 3, 4).reshape(-1, w[0].numel())
    tok = patches @ w.reshape(E, -1).T + model.patch_embed.proj.bias.double()
    mid = tok.shape[0] // 2
    seq = torch.cat([tok[:mid], model.cls_token[0].double(), tok[mid:]]) + model.pos_embed[0].double()

    def rms(x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * weight.double()

    residual, hidden = None, seq
    for layer in model.layers:
        residual = hidden if residual is None else residual + hidden
        hidden = naive_mixer(layer.mixer, rms(residual, layer.norm.weight))
    out = rms(residual + hidden, model.norm_f.weight)
    return out[mid] @ model.head.weight.double().T + model.head.bias.double()


def test_vim_equals_naive_forward():
    torch.manual_seed(0)
    model = rmeeto.create_model("vim_test_patch4_16", depth=2, embed_dim=8).eval()
    randomize(model, 3)
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        logits = model(images)
    for i in range(2):
        ref = naive_vim(model, images[i])
        assert torch.allclose(logits[i].double(), ref, rtol=1e-4, atol=1e-5)


def test_backends_agree_on_whole_model():
    torch.manual_seed(0)
    model = rmeeto.create_model("vim_test_patch4_16").eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        a = model(x)
        model.set_scan_backend("reference")
        b = model(x)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def per_direction_forward(m: BiMambaMixer, hidden, export=None):
    """The mixer as two independent branch() calls, summed and halved (its form before the directions
    shared their kernel launches)."""
    x, z = m.in_proj(hidden).chunk(2, dim=-1)
    y_f, aux_f = m.branch(x, z, reverse=False)
    y_b, aux_b = m.branch(x, z, reverse=True)
    y = y_f + y_b
    if m.divide_out:
        y = y / 2
    metric = None if export is None else (aux_f[export] + aux_b[export]) / 2
    return m.out_proj(y), metric


def test_bidirectional_forward_equals_per_direction_branches():
    """forward() (one conv and one scan for both directions, the halving folded into the scan) gives the
    per-direction form's output, metric and every gradient bit for bit on the CPU paths."""
    torch.manual_seed(0)
    for divide_out in (True, False):
        for backend in ("auto", "reference"):
            m = BiMambaMixer(24, d_state=8, divide_out=divide_out, scan_backend=backend)
            randomize(m, 2)
            hidden = torch.randn(3, 13, 24, requires_grad=True)
            for export in (None, "B", "C", "delta"):
                out, metric = m(hidden, export=export)
                ref, ref_metric = per_direction_forward(m, hidden, export)
                assert torch.equal(out, ref), (divide_out, backend, export)
                assert (metric is None and ref_metric is None) or torch.equal(metric, ref_metric)
            leaves = [hidden, *m.parameters()]
            g = torch.randn(3, 13, 24)
            got = torch.autograd.grad(m(hidden)[0], leaves, g)
            want = torch.autograd.grad(per_direction_forward(m, hidden)[0], leaves, g)
            for name, a, b in zip(["hidden"] + [n for n, _ in m.named_parameters()], got, want):
                assert torch.equal(a, b), (divide_out, backend, name)
    with pytest.raises(ValueError, match="export"):
        m(hidden, export="D")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inference_sum_of_directions_equals_the_training_one_bit_for_bit(dtype):
    """Without a gradient the two directions are added elementwise, with one they are summed by a reduction:
    both round a + b once, so the outputs are the same bits."""
    torch.manual_seed(0)
    model = rmeeto.create_model("vim_test_patch4_16").to(dtype).eval()
    x = torch.randn(2, 3, 16, 16, dtype=dtype)
    with torch.no_grad():
        fast = model(x)
    slow = model(x.requires_grad_())
    assert slow.requires_grad and torch.equal(fast, slow.detach())

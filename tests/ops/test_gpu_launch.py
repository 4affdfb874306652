"""GPU tests of the op layer: the cached Triton launcher (rmeeto.ops.triton._launch) gives bitwise the results of
the plain ``kernel[grid](...)`` launch for every kernel, forward and backward, over inputs whose alignment and
lengths change between calls (so a key that missed a specialization would run a wrongly compiled kernel), and
actually serves repeated calls; torch.compile of a merged and an unmerged tiny Vim runs in one graph and gives
the eager model's results."""

import pytest
import torch

from rmeeto.merge import plan_cls_index
from rmeeto.ops import policy

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
triton = pytest.importorskip("triton")

from rmeeto.ops.triton import _launch  # noqa: E402
from rmeeto.ops.triton import conv as tconv  # noqa: E402
from rmeeto.ops.triton import merge as tmerge  # noqa: E402
from rmeeto.ops.triton import norm as tnorm  # noqa: E402
from rmeeto.ops.triton import scan as tscan  # noqa: E402

DEV = "cuda"
OFFSETS = (0, 1, 3, 8)  # elements: 16-byte aligned or not, depending on the dtype
LENGTHS = (7, 16, 33, 197)


@pytest.fixture
def restore_fast_launch():
    previous = policy.fast_launch()
    yield
    policy.set_fast_launch(previous)


def _offset(shape, off, dtype=torch.float32):
    """A contiguous tensor of ``shape`` starting ``off`` elements into a fresh buffer."""
    n = 1
    for s in shape:
        n *= s
    return torch.randn(n + off, device=DEV, dtype=dtype)[off:].view(shape)


def _fast_equals_plain(run, plain_calls_allowed=0):
    """run() -> list of tensors. Plain launch, then fast (first call fills the cache, second must be served from
    it without any plain launch); all three bitwise equal."""
    policy.set_fast_launch(False)
    want = run()
    policy.set_fast_launch(True)
    first = run()
    plain = []
    original = _launch._plain

    def counting(*args):
        plain.append(args[0])
        return original(*args)

    _launch._plain = counting
    try:
        second = run()
    finally:
        _launch._plain = original
    torch.cuda.synchronize()
    for got in (first, second):
        assert len(got) == len(want)
        for a, b in zip(got, want):
            assert torch.equal(a, b), (a - b).abs().max()
    assert len(plain) <= plain_calls_allowed, f"cached launches fell back to the plain path: {plain}"


def _grads(outs, leaves, seed=0):
    """outs (a tensor or a list) and the gradients of every leaf for fixed random output gradients."""
    outs = [outs] if isinstance(outs, torch.Tensor) else list(outs)
    gen = torch.Generator(DEV).manual_seed(seed)
    gs = [torch.randn(o.shape, device=DEV, dtype=o.dtype, generator=gen) for o in outs]
    return outs + list(torch.autograd.grad(outs, leaves, gs))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_scan_fast_launch_equals_plain(restore_fast_launch, dtype):
    for off in OFFSETS:
        for L in LENGTHS:
            for reverse in (False, True):
                b, d, n = 2, 48, 16
                torch.manual_seed(L + off)
                # channels-last views as the Vim mixer hands them over (unit channel stride), offset in memory
                u = _offset((b, L, d), off, dtype).transpose(1, 2).requires_grad_()
                delta = (_offset((b, L, d), off, dtype) * 0.5).transpose(1, 2).requires_grad_()
                z = _offset((b, L, d), off, dtype).transpose(1, 2).requires_grad_()
                A = (torch.randn(d, n, device=DEV) * 0.5).requires_grad_()
                B = _offset((b, L, n), off, dtype).transpose(1, 2).requires_grad_()
                C = _offset((b, L, n), off, dtype).transpose(1, 2).requires_grad_()
                D = torch.randn(d, device=DEV, requires_grad=True)
                bias = torch.randn(d, device=DEV, requires_grad=True)
                leaves = [u, delta, A, B, C, D, z, bias]

                def run():
                    out = tscan.selective_scan_triton(u, delta, A, B, C, D, z, bias, delta_softplus=True,
                                                      reverse=reverse, a_is_log=True)
                    return _grads(out, leaves)

                _fast_equals_plain(run)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("K", [4, 3])
def test_conv_fast_launch_equals_plain(restore_fast_launch, dtype, K):
    for off in OFFSETS:
        for L in LENGTHS:
            for reverse in (False, True):
                b, d = 2, 96
                torch.manual_seed(L + off)
                xz = _offset((b, L, 2 * d + off), off, dtype)
                x = xz[..., off:off + d].detach().requires_grad_()  # a slice of in_proj's output
                w = torch.randn(d, 1, K, device=DEV, dtype=dtype, requires_grad=True)
                bias = torch.randn(d, device=DEV, dtype=dtype, requires_grad=True)
                _fast_equals_plain(lambda: _grads(tconv.conv_silu_triton(x, w, bias, reverse), [x, w, bias]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_norm_fast_launch_equals_plain(restore_fast_launch, dtype):
    for off in OFFSETS:
        for L in LENGTHS:
            for has_res in (False, True):
                for has_scale in (False, True):
                    b, C = 3, 192
                    torch.manual_seed(L + off)
                    h = _offset((b, L, C), off, dtype).requires_grad_()
                    r = _offset((b, L, C), off).requires_grad_() if has_res else None
                    w = (torch.rand(C, device=DEV) + 0.5).requires_grad_()
                    scale = torch.tensor([0.0, 1.25, 1.25], device=DEV) if has_scale else None
                    leaves = [t for t in (h, r, w) if t is not None]

                    def run():
                        ro, y = tnorm.add_rms_norm_triton(h, r, w, 1e-5, scale)
                        return _grads([ro, y], leaves, 1)

                    _fast_equals_plain(run)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_merge_fast_launch_equals_plain(restore_fast_launch, dtype):
    for off in OFFSETS:
        for L in (17, 33, 197):
            for ordered in (True, False):
                b, C, cls = 2, 64, L // 2
                r = (L - 1) // 4
                new_cls = plan_cls_index(cls, L, r, ordered)
                torch.manual_seed(L + off)
                h = _offset((b, L, C), off, dtype).requires_grad_()
                res = _offset((b, L, C), off).requires_grad_()
                size = torch.randint(1, 4, (b, L, 1), device=DEV).float()
                metric = _offset((b, L, C), off, dtype)

                def run():
                    (h2, r2), s2 = tmerge.match_merge_fused(h, res, size, metric, cls, r, new_cls, ordered)
                    plan = tmerge.match_plan(metric, cls, r, new_cls, ordered)
                    return list(plan) + [s2] + _grads([h2, r2], [h, res], 1)

                _fast_equals_plain(run)


def test_the_cache_key_separates_alignments(restore_fast_launch):
    """Two calls of one kernel that differ only in a pointer's 16-byte alignment get two cache entries."""
    policy.set_fast_launch(True)
    _launch.clear_cache()
    w = torch.rand(64, device=DEV)
    for off in (0, 1):
        h = _offset((2, 5, 64), off)
        tnorm.add_rms_norm_triton(h, None, w, 1e-5)
    state = _launch._kernels[id(tnorm._add_norm_fwd)]
    assert state is not None and len(state.launchers) == 2


@pytest.mark.parametrize("merged", [False, True])
def test_compiled_vim_equals_eager(merged, tiny_vim):
    torch._dynamo.reset()
    model = tiny_vim(merged, DEV).eval()
    x = torch.randn(4, 3, 16, 16, device=DEV)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        want = model(x)
        got = compiled(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("merged", [False, True])
def test_compiled_half_inference_launches_what_eager_does(merged, tiny_vim):
    """torch.compile (Inductor) of a 16-bit model in inference: each mixer one op running its plan, each merging
    step one op (rmeeto::mixer_inference, rmeeto::match_merge_add_norm), so the compiled forward launches at
    most a few kernels more than eager mode (Inductor's, around the embedding and the head) and gives eager's
    logits up to the rounding of those few."""
    from rmeeto.bench import count_launches

    torch._dynamo.reset()
    model = tiny_vim(merged, DEV).half().eval()
    with torch.no_grad():
        for p in model.parameters():  # away from the init's constants, so a swapped operand would show
            p.add_(torch.randn_like(p) * 0.05)
    x = torch.randn(4, 3, 16, 16, device=DEV).half()
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        want = model(x)
        got = compiled(x)
        again = compiled(x)
        eager_n = count_launches(model, x).gpu
        compiled_n = count_launches(compiled, x).gpu
    torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3)
    assert torch.equal(again, got)
    assert compiled_n <= eager_n + 6, (compiled_n, eager_n)


def test_compiled_with_cuda_graphs_runs_a_merged_model(tiny_vim):
    """torch.compile(mode="reduce-overhead") (Inductor's CUDA graphs) of a merged 16-bit model: the merging step's
    op allocates nothing that outlives a call but its outputs (Inductor refuses a graph whose pool holds other live
    tensors: the kept workspaces of eager mode did), and replays give eager's logits."""
    torch._dynamo.reset()
    model = tiny_vim(True, DEV).half().eval()
    x = torch.randn(4, 3, 16, 16, device=DEV).half()
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    with torch.no_grad():
        want = model(x)
        for _ in range(4):  # warm-up runs, the capture, replays
            got = compiled(x).clone()
    torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("merged", [False, True])
def test_compiled_vim_training_step_equals_eager(merged, tiny_vim):
    """Forward and backward through the custom ops' autograd registrations under torch.compile."""
    torch._dynamo.reset()
    model = tiny_vim(merged, DEV).train()
    x = torch.randn(4, 3, 16, 16, device=DEV)
    compiled = torch.compile(model, fullgraph=True)
    grads = []
    for fn in (model, compiled):
        model.zero_grad()
        fn(x).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4)

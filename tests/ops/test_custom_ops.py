"""The op layer of the Triton kernels on CPU: every kernel is a torch.library custom op whose fake (meta) and real
implementations agree and whose autograd registration is sound (torch.library.opcheck, kernels run by Triton's
interpreter); the eager path (an autograd.Function over the same launchers) gives bitwise the custom op's
results; and torch.compile's tracer sees no graph break in a merged or unmerged Vim, on the PyTorch path and on
the fused path."""

import pytest
import torch

from rmeeto.ops import conv

from test_interpreted import run_interpreted


def _needs_interpreter():
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        pytest.skip("CUDA machines test the compiled kernels instead (tests/ops/test_gpu_launch.py)")


# ------------------------------------------------------------------------------------------------ conv
@pytest.mark.parametrize("K", [2, 4, 5, 7])
@pytest.mark.parametrize("reverse", [False, True])
def test_conv_backward_in_pytorch_matches_autograd(K, reverse):
    """The PyTorch backward the conv op uses for kernels of more than 4 taps (any K) equals autograd through
    the reference."""
    from rmeeto.ops.triton import conv as tconv

    torch.manual_seed(K)
    x = torch.randn(2, 9, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 1, K, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 9, 6, dtype=torch.float64)
    want = torch.autograd.grad(conv.conv_silu_torch(x, w, b, reverse), [x, w, b], g)
    got = tconv._conv_silu_bwd_torch(x.detach(), w.detach(), b.detach(), g, reverse)
    for a, e in zip(got, want):
        assert a.shape == e.shape and a.dtype == e.dtype
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------------------------- opcheck
def test_custom_ops_pass_opcheck_under_the_interpreter():
    """torch.library.opcheck on every custom op (schema, fake tensors against the real kernels, autograd
    registration, AOT dispatch), and the eager autograd path bitwise equal to the custom op, gradients too."""
    _needs_interpreter()
    run_interpreted("""
        import sys, torch
        from torch.library import opcheck
        from rmeeto.ops.triton import scan as ts, conv as tc, norm as tn, merge as tm
        from rmeeto.merge import bipartite_match, plan_cls_index
        torch.manual_seed(0)
        bad = []

        def check(name, op, args):
            try:
                result = opcheck(op, args)
            except Exception as e:
                bad.append((name, repr(e)[:1500]))
                return
            for test, verdict in result.items():
                if verdict != "SUCCESS":
                    bad.append((name, test, verdict))

        def same(name, eager, compiled_op, leaves):
            # eager autograd function vs custom op: same launchers, so bitwise equal values and gradients
            outs = []
            for fn in (eager, compiled_op):
                out = fn()
                out = out if isinstance(out, tuple) else (out,)
                out = [o for o in out if o.is_floating_point() and o.requires_grad]
                gs = torch.autograd.grad(out, leaves, [torch.ones_like(o) * 0.7 for o in out], allow_unused=True)
                outs.append(list(out) + [g for g in gs if g is not None])
            if len(outs[0]) != len(outs[1]) or not all(torch.equal(a, b) for a, b in zip(*outs)):
                bad.append((name, "eager != custom op"))

        # scan: channels-last views as in Vim, with and without the optional inputs
        b, d, n, L = 2, 8, 4, 5
        for full in (True, False):
            u = torch.randn(b, L, d).transpose(1, 2).requires_grad_()
            delta = (torch.randn(b, L, d) * 0.5).transpose(1, 2).requires_grad_()
            A = (torch.randn(d, n) * 0.5).requires_grad_()
            B, C = torch.randn(b, n, L, requires_grad=True), torch.randn(b, n, L, requires_grad=True)
            D = torch.randn(d, requires_grad=True) if full else None
            z = torch.randn(b, d, L, requires_grad=True) if full else None
            bias = torch.randn(d, requires_grad=True) if full else None
            args = (u, delta, A, B, C, D, z, bias, True, full, True)
            check("scan", ts._selective_scan_op, args)
            g = torch.randn(b, d, L)
            check("scan_bwd", ts._selective_scan_bwd_op, (g,) + tuple(t.detach() if t is not None else None for t in args[:8]) + args[8:])
            leaves = [t for t in args[:8] if t is not None]
            same("scan", lambda: ts._SelectiveScan.apply(*args), lambda: ts._selective_scan_op(*args), leaves)

        # conv: 4 taps (the kernel's backward) and 5 (the PyTorch backward), both directions
        for K in (4, 5):
            for reverse in (False, True):
                x = torch.randn(2, 7, 12, requires_grad=True)
                w = torch.randn(12, 1, K, requires_grad=True)
                bb = torch.randn(12, requires_grad=True)
                check("conv", tc._conv_silu_op, (x, w, bb, reverse))
                check("conv_bwd", tc._conv_silu_bwd_op, (x.detach(), w.detach(), bb.detach(), torch.randn(2, 7, 12), reverse))
                same("conv", lambda: tc._ConvSilu.apply(x, w, bb, reverse), lambda: tc._conv_silu_op(x, w, bb, reverse), [x, w, bb])

        # add + RMSNorm: with / without residual and drop-path scale
        for has_res in (True, False):
            for has_scale in (True, False):
                h = torch.randn(2, 5, 24, requires_grad=True)
                r = torch.randn(2, 5, 24, requires_grad=True) if has_res else None
                w = (torch.rand(24) + 0.5).requires_grad_()
                s = torch.tensor([0.0, 2.0]) if has_scale else None
                check("norm", tn._add_rms_norm_op, (h, r, w, s, 1e-5))
                ro, y, rstd = tn._norm_fwd(h.detach(), None if r is None else r.detach(), w.detach(), s, 1e-5)
                check("norm_bwd", tn._add_rms_norm_bwd_op, (torch.randn_like(ro), torch.randn_like(y), ro, rstd, w.detach(), s, has_res, torch.float32))
                leaves = [t for t in (h, r, w) if t is not None]
                same("norm", lambda: tn._AddRMSNorm.apply(h, r, w, s, 1e-5), lambda: tn._add_rms_norm_op(h, r, w, s, 1e-5)[:2], leaves)

        # merge: the matching kernels, then the merge with and without sizes
        Bm, Lm, Cm, cls, R = 2, 17, 16, 8, 4
        for ordered in (True, False):
            new_cls = plan_cls_index(cls, Lm, R, ordered)
            metric = torch.randn(Bm, Lm, Cm)
            check("match_plan", tm._match_plan_op, (metric, cls, R, new_cls, ordered))
            dest, base, src, sdst, head, nxt = tm._match_lists(metric, cls, R, new_cls, ordered)
            for size in (None, torch.randint(1, 4, (Bm, Lm, 1)).float()):
                h = torch.randn(Bm, Lm, Cm, requires_grad=True)
                res = torch.randn(Bm, Lm, Cm, requires_grad=True)
                check("merge", tm._merge_op, (h, res, size, dest, base, head, nxt))
                same("merge", lambda: tm._FusedMerge.apply(h, res, size, dest, base, head, nxt),
                     lambda: tm._merge_op(h, res, size, dest, base, head, nxt), [h, res])
                if size is None:  # (rmeeto::merging_block_inference below takes no sizes)
                    continue
                # the inference ops torch.compile traces (no autograd: inputs without gradients)
                w = torch.rand(Cm) + 0.5
                check("match_merge_add_norm", torch.ops.rmeeto.match_merge_add_norm.default,
                      (h.detach().half(), res.detach(), size, h.detach().half(), cls, R, new_cls, ordered, w.half(),
                       1e-5))

        from rmeeto.models.vim import BiMambaMixer
        mixer = BiMambaMixer(32, d_state=8).half()
        with torch.no_grad():
            for p in mixer.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        weights = [t.detach() if t is not None else None for t in mixer._plan_tensors()]
        h = torch.randn(2, 5, 32).half()
        check("mixer_inference", torch.ops.rmeeto.mixer_inference.default, (h, *weights, 8, 0.5))
        for res in (None, torch.randn(2, 5, 32)):
            check("block_inference", torch.ops.rmeeto.block_inference.default,
                  (h, res, (torch.rand(32) + 0.5).half(), 1e-5, *weights, 8, 0.5))
        h9 = torch.randn(2, 9, 32).half()
        norm_w = (torch.rand(32) + 0.5).half()  # class token 4 of 9, 3 merged: at 2 after (plan_cls_index)
        check("merging_block_inference", torch.ops.rmeeto.merging_block_inference.default,
              (h9, torch.randn(2, 9, 32), None, 4, 3, 2, True, norm_w, 1e-5, *weights, 8, 0.5))
        print("FAILURES", bad)
        sys.exit(1 if bad else 0)
    """)


# ------------------------------------------------------------------------------------- how ops dispatch
def test_ops_are_plain_library_definitions():
    """Every rmeeto op is a plain torch.library definition (``library_op``): one kernel for every device, a fake
    for tracing, a Python autograd kernel only where a backward exists; never a ``torch.library.custom_op``, whose
    Python wrapper was half of a compiled merged Vim-Ti forward's host time on the H200 (benchmarks/results/s23)."""
    pytest.importorskip("triton")
    import torch._library.custom_ops as custom_ops
    from torch._library.simple_registry import singleton

    import rmeeto.ops.triton.mixer  # noqa: F401  (defines the ops: it imports every op module)

    packets = torch.ops.rmeeto
    names = sorted(n for n in dir(packets) if isinstance(getattr(packets, n), torch._ops.OpOverloadPacket))
    with_backward = {"selective_scan", "selective_scan_bidir", "conv_silu", "add_rms_norm", "merge_fused"}
    assert with_backward < set(names) and len(names) == 14, names
    for name in names:
        qualname = f"rmeeto::{name}"
        assert qualname not in custom_ops.OPDEFS, f"{qualname} is a torch.library.custom_op"
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CompositeExplicitAutograd"), qualname
        assert singleton.find(qualname).fake_impl.kernel is not None, f"{qualname} has no fake"
        has_autograd = torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "Autograd")
        assert has_autograd == (name in with_backward), (qualname, has_autograd)


# ----------------------------------------------------------------------------------------- graph breaks
@pytest.mark.parametrize("merged", [False, True])
def test_no_graph_break_on_the_pytorch_path(merged, tiny_vim):
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(tiny_vim(merged).eval())(torch.randn(2, 3, 16, 16))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_no_graph_break_on_the_fused_path_under_the_interpreter():
    """Every fused op forced on for CPU tensors (kernels run by the interpreter): dynamo must see each Triton
    kernel as one opaque custom op (never trace into the autograd functions or the launchers), merged and
    unmerged, and the traced model must give the eager model's output bit for bit. In 16-bit inference each
    block is one op (``rmeeto::block_inference``, a merging block ``rmeeto::merging_block_inference``), the
    launches of eager mode's plans; a float32 mixer, or a gradient to compute, traces the general path's ops.
    The compiled model is called again after its first call and after an eager call (which fills the lazily
    filled caches: a trace that read them would be compiled again). The model is the test Vim cut to 3 layers
    and 8x8 pixels (5 tokens, 3 after the merge at layer 2): the interpreted scan's time grows with the tokens
    and layers, what dynamo traces does not."""
    _needs_interpreter()
    run_interpreted("""
        import sys, torch, torch._dynamo
        from rmeeto import MergeConfig, apply_merge, create_model
        from rmeeto.ops import policy, selective_scan
        from rmeeto.ops.triton import scan as ts, merge as tm
        # force the fused kernels onto CPU tensors (they only run there under the interpreter)
        policy.use_fused = lambda op, x, backend="auto": backend != "torch"
        ts.is_available = lambda: True
        tm.is_available = lambda: True
        selective_scan.set_default_backend("triton")
        selective_scan._loaded.clear()
        bad = []
        general = {"rmeeto.selective_scan_bidir", "rmeeto.conv_silu", "rmeeto.add_rms_norm"}
        whole = {"rmeeto.block_inference", "rmeeto.add_rms_norm"}  # (the add_rms_norm: the final norm)
        # (dtype, gradient enabled, merged); a merged model's other blocks are an unmerged one's
        cases = [(torch.float32, False, True), (torch.float16, False, True), (torch.float16, True, True)]
        for dtype, grad, merged in cases:
            torch.manual_seed(0)
            model = create_model("vim_test_patch4_16", img_size=8, depth=3).to(dtype).eval()
            with torch.no_grad():
                for p in model.parameters():  # away from the init's constants, so a swapped operand would show
                    p.add_(torch.randn_like(p) * 0.05)
            if merged:
                apply_merge(model, MergeConfig(num_merged=2))
            x = torch.randn(2, 3, 8, 8).to(dtype)
            ops_seen, graphs = [], []
            def backend(gm, example_inputs):
                graphs.append(gm)
                ops_seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
                return gm
            torch._dynamo.reset()
            selective_scan._loaded.clear()  # as in a fresh process: filled on the first trace, not before
            with torch.set_grad_enabled(grad):
                try:  # fullgraph: any graph break raises, naming its reason
                    compiled = torch.compile(model, backend=backend, fullgraph=True)
                    got = compiled(x)
                    again = compiled(x)  # no second compilation (a guard on a global the trace filled)
                except Exception as e:
                    bad.append((dtype, grad, merged, "graph break", str(e)[:2000]))
                    continue
                want = model(x)  # (eager: fills the caches the trace must not have guarded on)
                after_eager = compiled(x)
            if len(graphs) != 1 or not torch.equal(again, got) or not torch.equal(after_eager, got):
                bad.append((dtype, grad, merged, "compiled again on a later call", len(graphs)))
            need = set(whole if dtype == torch.float16 and not grad else general)
            if merged:  # inference merges in one op in any dtype, as eager mode does
                if grad:
                    need |= {"rmeeto.match_plan", "rmeeto.merge_fused"}
                else:  # the merge (+ add + norm) one op in any dtype, with the mixer where the mixer's op serves
                    need.add("rmeeto.merging_block_inference" if dtype == torch.float16
                             else "rmeeto.match_merge_add_norm")
            seen = {s.rsplit(".", 1)[0] for s in ops_seen if s.startswith("rmeeto.")}
            if seen != need:
                bad.append((dtype, grad, merged, "ops in the graph", sorted(seen), sorted(need)))
            if not torch.equal(got, want):
                bad.append((dtype, grad, merged, "compiled != eager", (got - want).abs().max().item()))
        print("FAILURES", bad)
        sys.exit(1 if bad else 0)
    """)


# ------------------------------------------------------------------------- Inductor fallbacks, registered
def test_every_custom_op_is_registered_with_inductor_before_it_lowers():
    """Every ``rmeeto::`` op is in Inductor's lowering table once Inductor is imported (rmeeto.ops.triton._inductor:
    PyTorch 2.11's implicit-fallback path built a string doubling per block, and a 24-block Vim did not compile),
    with the layout constraint the implicit path would choose from the op's tags; and an op defined after Inductor's
    import is registered at once. Found by the dispatcher's op names, so a new op without ``@lower_as_fallback``
    fails here. In a fresh process: the hook is what runs when rmeeto comes first."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("triton")
    code = (
        "import sys, torch\n"
        "import rmeeto.ops.triton.mixer\n"  # defines every op (mixer imports conv, merge, norm, proj, scan)
        "assert 'torch._inductor.lowering' not in sys.modules\n"
        "from torch._inductor import lowering\n"  # the hook registers here
        "from torch._library.utils import get_layout_constraint_tag\n"
        "from rmeeto.ops.triton._inductor import lower_as_fallback, registered\n"
        "names = sorted(n.split('::')[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith('rmeeto::'))\n"
        "missing = [n for n in names if not registered(getattr(torch.ops.rmeeto, n).default)]\n"
        "assert len(names) >= 14 and not missing, (names, missing)\n"
        "op = torch.ops.rmeeto.block_inference.default\n"
        "want = lowering.tag_to_layout_constraint(get_layout_constraint_tag(op, with_default=True))\n"
        "assert lowering.maybe_layout_constraints(op) is want, (lowering.maybe_layout_constraints(op), want)\n"
        "@lower_as_fallback\n"
        "@torch.library.custom_op('rmeeto_test::late', mutates_args=())\n"
        "def late(x: torch.Tensor) -> torch.Tensor:\n"
        "    return x + 1\n"
        "@torch.library.custom_op('rmeeto_test::plain', mutates_args=())\n"
        "def plain(x: torch.Tensor) -> torch.Tensor:\n"
        "    return x + 1\n"
        "assert registered(late) and not registered(plain)\n"
        "print('ok', len(names))\n"
    )
    src = Path(__file__).resolve().parents[2] / "src"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(src)})
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stderr[-2000:]

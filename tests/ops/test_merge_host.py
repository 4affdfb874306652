"""The host side of the fused merge (issue 14): in eager inference a merging layer must not make the host wait
for the GPU, and its host work is a fixed, small number of Triton launches and tensor ops.

On CPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1, in a subprocess); a TorchDispatchMode
records every aten op the forward issues outside the launches (the interpreter's own copies inside a launch
are not what a GPU launch does, so recording pauses there). On CUDA: ``torch.cuda.set_sync_debug_mode("error")``
around a merged forward, the per-stream workspaces, and graph capture."""

import textwrap
import threading

import pytest
import torch

from test_interpreted import run_interpreted


def _needs_interpreter():
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        pytest.skip("CUDA machines test the compiled kernels instead (the GPU tests below)")


# what the recording harness of the interpreted tests shares: the mode, the launch counter, the sync ops
_HARNESS = """
import sys, torch
from torch.utils._python_dispatch import TorchDispatchMode
from rmeeto import MergeConfig, apply_merge, create_model
from rmeeto.merge import bipartite_match, merge_streams, plan_cls_index
from rmeeto.ops import policy
from rmeeto.ops.triton import merge as tm

# the fused merge on CPU tensors (its kernels run in the interpreter); scan, conv and norm stay on PyTorch
policy.use_fused = lambda op, x, backend="auto": op == "merge" and backend != "torch"
tm.is_available = lambda: True

# ops that make the host wait for the device (or, for a boolean index, call nonzero inside)
SYNC = {"_local_scalar_dense", "item", "nonzero", "nonzero_static", "masked_select", "_unique", "_unique2",
        "unique_dim", "unique_consecutive", "is_nonzero", "equal", "allclose", "repeat_interleave",
        "_assert_async", "_assert_scalar", "tolist"}

class Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.on = True
        self.ops = []      # every aten op while recording
        self.syncs = []    # the host-sync ones among them
        self.regions = []  # per match_merge_fused call: [aten ops, launches]
        self.current = None  # the region of the call running now

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.on:
            name = func.overloadpacket.__name__
            self.ops.append(str(func))
            if self.current is not None:
                self.current[0].append(str(func))
            if name in SYNC:
                self.syncs.append(str(func))
            if name in ("index", "index_put", "index_put_") and any(
                    isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in (args[1] or [])):
                self.syncs.append(str(func) + " (boolean index)")
            if name in ("_to_copy", "to", "copy_") and any(
                    isinstance(a, torch.Tensor) and a.device.type != "cpu" for a in args) and (
                    kwargs.get("device") == torch.device("cpu")):
                self.syncs.append(str(func) + " (to cpu)")
        return func(*args, **kwargs)

REC = Recorder()
_launch = tm.launch

def counting_launch(kernel, grid, device, *args, **meta):
    on, REC.on = REC.on, False  # the interpreter's own tensor work inside a launch is not recorded
    try:
        if REC.current is not None:
            REC.current[1].append(kernel.fn.__name__)
        return _launch(kernel, grid, device, *args, **meta)
    finally:
        REC.on = on

tm.launch = counting_launch
_mmf = tm.match_merge_fused

def recorded_mmf(*args, **kwargs):
    REC.current = [[], []]
    REC.regions.append(REC.current)
    try:
        return _mmf(*args, **kwargs)
    finally:
        REC.current = None

tm.match_merge_fused = recorded_mmf
"""


def test_merged_forward_has_no_host_sync_and_two_launches_per_merging_layer():
    """A merged Vim (three merging layers, sizes carried from the second on) on the fused merge path, eager and
    without gradients: no op of its whole forward waits for the device, and every merging layer, once its
    shape has been seen, costs exactly two launches (the one-launch match, merge) and three aten ops (the
    three output allocations). Before issue 14's rework it was four launches and 17 aten ops (an allocation,
    a split into ten views and their dtype / shape views, then the outputs); before the one-launch match,
    three launches (best partner, plan, merge). The output equals the PyTorch
    merge's, and the warm call's equals the first call's (the reused workspace changes nothing)."""
    _needs_interpreter()
    run_interpreted(_HARNESS + textwrap.dedent("""
    torch.manual_seed(0)
    model = create_model("vim_test_patch4_16").eval()
    apply_merge(model, MergeConfig(num_merged=2, interval=1))  # layers 1, 2, 3 merge: 17 -> 15 -> 13 -> 11 tokens
    x = torch.randn(2, 3, 16, 16)
    bad = []
    with torch.no_grad():
        first = model(x)
        REC.regions.clear()
        with REC:
            warm = model(x)
        policy.use_fused = lambda op, x, backend="auto": False
        ref = model(x)
    if REC.syncs:
        bad.append(("host syncs", REC.syncs))
    regions = REC.regions
    if len(regions) != 3:
        bad.append(("merging layers", len(regions)))
    for ops, launches in regions:
        if launches != ["_match_kernel", "_merge_fwd_kernel"]:
            bad.append(("launches", launches))
        if ops != ["aten.empty.memory_format"] * 3:
            bad.append(("aten ops", ops))
    if not torch.equal(first, warm):
        bad.append(("warm != first", (first - warm).abs().max().item()))
    if not torch.allclose(warm, ref, rtol=1e-4, atol=1e-5):
        bad.append(("fused != PyTorch merge", (warm - ref).abs().max().item()))
    print("FAILURES", bad)
    sys.exit(1 if bad else 0)
    """))


def test_reused_workspace_never_reaches_autograd_or_the_caller():
    """The kept workspace is used only where the plan lists die with the call: a forward that needs gradients
    plans into a fresh workspace (its destination map is saved for the backward), so a no-gradient call of the
    same shape in between leaves the gradients right. A no-gradient call gives bitwise the outputs of the
    autograd path, and a second call does not change the first call's outputs."""
    _needs_interpreter()
    run_interpreted(_HARNESS + textwrap.dedent("""
    torch.manual_seed(1)
    bad = []
    B, L, C, cls, r = 2, 17, 24, 8, 4
    for ordered in (True, False):
        new_cls = plan_cls_index(cls, L, r, ordered)
        h = torch.randn(B, L, C, requires_grad=True)
        res = torch.randn(B, L, C, requires_grad=True)
        size = torch.randint(1, 4, (B, L, 1)).float()
        tm.clear_workspaces()  # (both layouts have the same shape, hence the same workspace)
        n_kept = len(tm._workspaces)
        (h1, r1), s1 = tm.match_merge_fused(h, res, size, h.detach(), cls, r, new_cls, ordered)
        if len(tm._workspaces) != n_kept:
            bad.append(("autograd path kept a workspace", ordered))
        # same shape, other data, no gradient: plans into the kept workspace
        other = [torch.randn(B, L, C) for _ in range(2)]
        with torch.no_grad():
            (h2, r2), s2 = tm.match_merge_fused(other[0], other[1], size, other[0], cls, r, new_cls, ordered)
            kept = dict(tm._workspaces)
            (h3, r3), s3 = tm.match_merge_fused(h.detach(), res.detach(), size, h.detach(), cls, r, new_cls, ordered)
        if len(kept) != n_kept + 1 or any(tm._workspaces[k] is not v for k, v in kept.items()):
            bad.append(("one workspace per shape, reused", ordered, len(kept) - n_kept))
        if not (torch.equal(h3, h1) and torch.equal(r3, r1) and torch.equal(s3, s1)):
            bad.append(("no-grad != autograd path", ordered))
        (g2h, g2r), _ = merge_streams([other[0], other[1]], size, bipartite_match(other[0], cls, r, ordered=ordered))
        if not (torch.allclose(h2, g2h, rtol=1e-5, atol=1e-6) and torch.allclose(r2, g2r, rtol=1e-5, atol=1e-6)):
            bad.append(("first no-grad call changed by the second", ordered))
        gh, gr = torch.randn_like(h1), torch.randn_like(r1)
        grads = torch.autograd.grad((h1 * gh).sum() + (r1 * gr).sum(), [h, res])
        (hr, rr), _ = merge_streams([h, res], size, bipartite_match(h.detach(), cls, r, ordered=ordered))
        want = torch.autograd.grad((hr * gh).sum() + (rr * gr).sum(), [h, res])
        if not all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(grads, want)):
            bad.append(("gradients after a no-grad call", ordered))
    print("FAILURES", bad)
    sys.exit(1 if bad else 0)
    """))


def test_workspace_key_separates_threads_and_shapes():
    """One kept workspace per (device, stream, thread, shape): the same call on the same thread gets the same
    one; another shape or another thread gets its own (two threads on one stream must not share plan
    lists); clear_workspaces drops them all. The views have the shapes and dtypes the kernels index."""
    pytest.importorskip("triton")
    from rmeeto.ops.triton import merge as tm

    tm.clear_workspaces()
    cpu = torch.device("cpu")
    a = tm._reused_workspace(2, 17, 3, cpu)
    assert tm._reused_workspace(2, 17, 3, cpu) is a
    assert tm._reused_workspace(2, 15, 3, cpu) is not a
    assert tm._reused_workspace(3, 17, 3, cpu) is not a
    other = []
    t = threading.Thread(target=lambda: other.append(tm._reused_workspace(2, 17, 3, cpu)))
    t.start()
    t.join()
    assert other[0] is not a
    dest, vmax, vidx, scratch, base, src, sdst, head, nxt, kslot = a
    assert dest.shape == (2, 17) and dest.dtype == torch.int64
    assert vmax.dtype == torch.float32 and vmax.numel() == 2 * 8 and vidx.numel() == 2 * 8
    assert [t.shape for t in (base, src, sdst, head, nxt, kslot)] == [(2, 14), (2, 3), (2, 3), (2, 14), (2, 17),
                                                                      (2, 17)]
    assert all(t.dtype == torch.int32 for t in (vidx, scratch, base, src, sdst, head, nxt, kslot))
    assert len(tm._workspaces) == 4
    tm.clear_workspaces()
    assert not tm._workspaces


# ---------------------------------------------------------------------------------------------------- CUDA
def _needs_cuda():
    from rmeeto.ops.triton import merge as tm

    if not tm.is_available():
        pytest.skip("needs CUDA and Triton")
    return tm


@pytest.mark.gpu
@pytest.mark.parametrize("metric", ["x", "B"])
def test_merged_forward_never_syncs_on_cuda(metric):
    """A merged Vim's eager fp16 forward (fused merge, default kernels) under sync debug mode "error": any op
    that makes the host wait for the GPU raises. Warm calls (after one call that compiles the kernels and makes
    the merge's workspaces)."""
    _needs_cuda()
    from rmeeto import MergeConfig, apply_merge, create_model

    torch.manual_seed(0)
    model = create_model("vim_test_patch4_16").cuda().half().eval()
    apply_merge(model, MergeConfig(num_merged=2, interval=1, metric=metric))
    x = torch.randn(4, 3, 16, 16, device="cuda", dtype=torch.half)
    with torch.no_grad():
        model(x)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.no_grad():
            for _ in range(3):
                model(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@pytest.mark.gpu
def test_two_streams_get_their_own_workspace():
    """The same shape merged on two streams at once: each stream plans into its own kept workspace and both
    results are the single-stream results."""
    tm = _needs_cuda()
    from rmeeto.merge import plan_cls_index

    torch.manual_seed(0)
    B, L, C, cls, r = 64, 197, 384, 98, 11
    new_cls = plan_cls_index(cls, L, r, True)
    inputs = [[torch.randn(B, L, C, device="cuda", dtype=torch.half) for _ in range(2)] for _ in range(2)]
    with torch.no_grad():
        want = [tm.match_merge_fused(h, res, None, h, cls, r, new_cls, True) for h, res in inputs]
        streams = [torch.cuda.Stream(), torch.cuda.Stream()]
        torch.cuda.synchronize()
        got = []
        for (h, res), stream in zip(inputs, streams):
            with torch.cuda.stream(stream):
                for _ in range(5):  # repeated: a shared workspace would race between the streams
                    out = tm.match_merge_fused(h, res, None, h, cls, r, new_cls, True)
                got.append(out)
        torch.cuda.synchronize()
    keys = {k[1] for k in tm._workspaces if k[3:] == (B, L, r)}
    assert {s.cuda_stream for s in streams} <= keys
    for ((hw, rw), sw), ((hg, rg), sg) in zip(want, got):
        assert torch.equal(hw, hg) and torch.equal(rw, rg) and torch.equal(sw, sg)


@pytest.mark.gpu
def test_graph_capture_plans_into_the_graphs_own_memory():
    """While a CUDA graph is captured the merge keeps no workspace (the graph's pool holds its plan), and the
    replay gives the eager result."""
    tm = _needs_cuda()
    from rmeeto.merge import plan_cls_index

    torch.manual_seed(0)
    B, L, C, cls, r = 8, 87, 192, 43, 11
    new_cls = plan_cls_index(cls, L, r, True)
    h = torch.randn(B, L, C, device="cuda", dtype=torch.half)
    res = torch.randn(B, L, C, device="cuda")
    with torch.no_grad():
        want = tm.match_merge_fused(h, res, None, h, cls, r, new_cls, True)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            tm.match_merge_fused(h, res, None, h, cls, r, new_cls, True)  # warm-up on the capture stream
        torch.cuda.current_stream().wait_stream(stream)
        kept = dict(tm._workspaces)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            got = tm.match_merge_fused(h, res, None, h, cls, r, new_cls, True)
        assert tm._workspaces == kept
        graph.replay()
        torch.cuda.synchronize()
    (hw, rw), sw = want
    (hg, rg), sg = got
    assert torch.equal(hw, hg) and torch.equal(rw, rg) and torch.equal(sw, sg)

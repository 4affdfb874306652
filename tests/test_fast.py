"""rmeeto.fast on the CPU: the capture-time check that lets a CUDA graph read its input where it lies
(GraphedForward._reads_only_through) and the offset a graph reads its input at (rmeeto.ops.embed.GraphInput),
with a stand-in for the graph whose replay runs the forward on whatever the offset names. The graphs themselves
are tested on CUDA (tests/ops/test_gpu_embed.py)."""

import torch

from rmeeto.fast import GraphedForward
from rmeeto.ops.embed import GraphInput


def tensors(out):
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


class StandInGraph:
    """Replays ``forward(image, captured)`` into the captured outputs: ``image`` the tensor ``source``'s offset
    names, as the fused embedding reads it (every tensor it was pointed at is known by address); ``captured`` the
    captured input itself, as any other op of the graph reads it."""

    def __init__(self, forward, static_in, source):
        self.forward, self.static_in, self.source = forward, static_in, source
        self.known = {static_in.data_ptr(): static_in}
        point_at = source.point_at

        def remember(t):
            self.known[t.data_ptr()] = t
            point_at(t)

        source.point_at = remember
        self.out = forward(static_in, static_in)

    def replay(self):
        ptr = self.static_in.data_ptr() + int(self.source.offset.item()) * self.static_in.element_size()
        for dst, src in zip(tensors(self.out), tensors(self.forward(self.known[ptr], self.static_in))):
            dst.copy_(src)


def check(forward, x):
    """GraphedForward's check on a stand-in graph of ``forward`` over a copy of ``x`` -> (verdict, the captured
    input afterwards, the source afterwards)."""
    static_in = x.clone()
    source = GraphInput(static_in)
    graph = StandInGraph(forward, static_in, source)
    return GraphedForward._reads_only_through(graph, static_in, graph.out, source), static_in, source


def test_the_check_passes_a_forward_that_reads_its_input_only_at_the_offset():
    x = torch.randn(2, 3, 4, 4)
    ok, static_in, source = check(lambda image, captured: (image * 2).sum((1, 2, 3)), x)
    assert ok
    assert torch.equal(static_in, x) and int(source.offset.item()) == 0  # left as it was, pointing at it


def test_the_check_catches_a_forward_that_reads_the_captured_input_elsewhere():
    x = torch.randn(2, 3, 4, 4)
    ok, static_in, source = check(lambda image, captured: image.sum() + captured.mean(), x)
    assert not ok
    assert torch.equal(static_in, x) and int(source.offset.item()) == 0


def test_the_check_compares_every_output_tensor_of_nested_outputs():
    x = torch.randn(2, 3, 4, 4)
    ok, _, _ = check(lambda image, captured: {"a": image.sum(0), "b": (image.mean(), 3)}, x)
    assert ok
    ok, _, _ = check(lambda image, captured: {"a": image.sum(0), "b": [captured.amax()]}, x)
    assert not ok


def test_integer_inputs_never_read_at_an_offset():
    x = torch.arange(8).reshape(2, 4)
    ok, _, _ = check(lambda image, captured: image.sum(), x)
    assert not ok


def test_graph_input_offsets_count_elements_and_skip_unchanged_fills():
    base = torch.zeros(64, dtype=torch.float16)
    a, b = base[:16], base[32:48]
    source = GraphInput(a)
    assert int(source.offset.item()) == 0 and not source.used
    source.point_at(b)
    assert int(source.offset.item()) == 32
    source.offset.fill_(-7)  # a second point_at at the same tensor does not fill again
    source.point_at(b)
    assert int(source.offset.item()) == -7
    source.point_at(a)
    assert int(source.offset.item()) == 0

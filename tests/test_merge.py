"""R-MeeTo merging: properties of the pure ops, the static schedule against the official trace, the model patch."""

import math

import pytest
import torch

import rmeeto
from rmeeto import MergeConfig, apply_merge, create_model, remove_merge, trace_tokens
from rmeeto.merge import bipartite_match, merge_streams, merge_tokens, plan_cls_index

TEST_MODEL = "vim_test_patch4_16"  # 17 tokens, depth 4, class token at 8


def images(n=2, size=16, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def make_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return create_model(TEST_MODEL, **overrides).eval()


def random_plan(batch=2, length=17, cls_index=8, num_merged=4, channels=6, seed=0, **kw):
    metric = torch.randn(batch, length, channels, generator=torch.Generator().manual_seed(seed))
    return metric, bipartite_match(metric, cls_index, num_merged, **kw)


def full_positions(cls_free: torch.Tensor, cls_index: int) -> torch.Tensor:
    """Class-free index -> index in the sequence with the class token at ``cls_index``."""
    return cls_free + (cls_free >= cls_index).long()


def src_positions(plan) -> torch.Tensor:
    """[batch, r] original positions of the merged-away sources (sources are the even class-free indices)."""
    return full_positions(plan.src_idx[..., 0] * 2, plan.cls_index)


# ============================================================================================ pure ops
@pytest.mark.parametrize("length,cls_index", [(17, 8), (18, 8), (16, 0), (16, 15)])
def test_size_weighted_merge_preserves_weighted_sum(length, cls_index):
    batch, r = 2, 5
    g = torch.Generator().manual_seed(1)
    _, plan = random_plan(batch, length, cls_index, r)
    x = torch.randn(batch, length, 4, generator=g, )
    y = torch.randn(batch, length, 3, generator=g, )
    size = torch.randint(1, 5, (batch, length, 1), generator=g).float()
    (x2, y2), size2 = merge_streams([x, y], size, plan, reduce="sum")
    assert x2.shape == (batch, length - r, 4) and size2.shape == (batch, length - r, 1)
    torch.testing.assert_close((x2 * size2).sum(1), (x * size).sum(1))
    torch.testing.assert_close((y2 * size2).sum(1), (y * size).sum(1))
    torch.testing.assert_close(size2.sum(1), size.sum(1))
    assert size2[:, plan.new_cls_index].eq(size[:, cls_index]).all()  # the class token is never merged


@pytest.mark.parametrize("length,cls_index,num_merged", [(17, 8, 4), (18, 8, 8), (33, 16, 1), (16, 0, 3)])
def test_ordered_merge_keeps_original_order(length, cls_index, num_merged):
    """Track which original tokens each output token holds: the patch that survives in each row (the one not
    merged away) must appear in increasing original order, and every merged source in the row of its
    destination. The class token goes to new_cls_index = floor(cls * (L - r) / L), the official approximate
    re-insertion index, which need not be its exact place among the surviving patches."""
    batch = 3
    _, plan = random_plan(batch, length, cls_index, num_merged)
    source = torch.eye(length).expand(batch, -1, -1)
    merged = merge_tokens(source, plan, "amax")
    assert merged.shape == (batch, length - num_merged, length)
    assert (merged.sum(1) == 1).all()  # every original token lives in exactly one output token
    srcs = src_positions(plan)
    for b in range(batch):
        gone = set(srcs[b].tolist())
        anchors = []
        for row in merged[b]:
            members = row.nonzero()[:, 0].tolist()
            survivors = [m for m in members if m not in gone]
            assert len(survivors) == 1
            anchors.append(survivors[0])
        assert anchors[plan.new_cls_index] == cls_index
        patches = anchors[: plan.new_cls_index] + anchors[plan.new_cls_index + 1:]
        assert patches == sorted(patches)
        assert plan.new_cls_index == (cls_index * (length - num_merged)) // length
        dst_pos = full_positions(plan.dst_idx[b, :, 0] * 2 + 1, cls_index)
        for s, d in zip(srcs[b].tolist(), dst_pos.tolist()):
            assert merged[b, anchors.index(d), s] == 1


def test_prune_drops_exactly_the_sources():
    batch, length, cls_index, r = 2, 17, 8, 5
    _, plan = random_plan(batch, length, cls_index, r)
    x = torch.randn(batch, length, 7)
    out = merge_tokens(x, plan, prune=True)
    for b in range(batch):
        keep = [t for t in range(length) if t != cls_index and t not in set(src_positions(plan)[b].tolist())]
        keep.insert(plan.new_cls_index, cls_index)  # the class token goes to the official approximate index
        assert torch.equal(out[b], x[b, keep])
    (streamed,), size = merge_streams([x], None, plan, prune=True)
    assert torch.equal(streamed, out) and (size == 1).all()


def test_unordered_layout():
    batch, length, cls_index, r = 2, 17, 8, 3
    metric, plan = random_plan(batch, length, cls_index, r, ordered=False)
    assert plan.order is None
    x = torch.randn(batch, length, 5)
    out = merge_tokens(x, plan, "sum")
    # independent recomputation of the official layout: [kept sources by score with cls inserted, destinations]
    t1 = math.ceil((length - 1) / 2)
    assert plan.new_cls_index == (cls_index * (t1 - r)) // t1
    m = torch.cat([metric[:, :cls_index], metric[:, cls_index + 1:]], 1)
    m = m / m.norm(dim=-1, keepdim=True)
    scores = (m[:, ::2] @ m[:, 1::2].transpose(1, 2)).max(-1).values
    for b in range(batch):
        rest = torch.cat([x[b, :cls_index], x[b, cls_index + 1:]])
        a, dst = rest[::2], rest[1::2].clone()
        order = scores[b].argsort(descending=True).tolist()
        unm_ids, src_ids = order[r:], order[:r]
        assert plan.unm_idx[b, :, 0].tolist() == unm_ids
        for s, d in zip(src_ids, plan.dst_idx[b, :, 0].tolist()):
            dst[d] += a[s]
        kept = a[unm_ids]
        expected = torch.cat([kept[: plan.new_cls_index], x[b, cls_index:cls_index + 1], kept[plan.new_cls_index:], dst])
        torch.testing.assert_close(out[b], expected)


@pytest.mark.parametrize("choose,expected", [(1, [0, 3, 2, 3]), (2, [1, 2, 1, 2]), (3, [2, 1, 3, 1])])
def test_choose_kth_partner(choose, expected):
    """Unit vectors at known angles: destinations at 0, 20, 40, 60 degrees; sources at 0, 60, 35, 90."""
    def unit(deg):
        return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]

    src, dst = [0, 60, 35, 90], [0, 20, 40, 60]
    rest = [v for pair in zip(src, dst) for v in (unit(pair[0]), unit(pair[1]))]
    cls_index = 4
    metric = torch.tensor(rest[:cls_index] + [[0.3, -1.0]] + rest[cls_index:])[None]
    plan = bipartite_match(metric, cls_index, 4, choose=choose)
    partner = dict(zip(plan.src_idx[0, :, 0].tolist(), plan.dst_idx[0, :, 0].tolist()))
    assert [partner[i] for i in range(4)] == expected


def test_distances_rank_differently_but_consistently():
    metric, cos = random_plan(num_merged=4, distance="cosine")
    _, l2 = random_plan(num_merged=4, distance="l2")
    # on unit vectors, l2 distance is a monotone function of cosine: same plan
    assert torch.equal(cos.src_idx, l2.src_idx) and torch.equal(cos.dst_idx, l2.dst_idx)
    _, l1 = random_plan(num_merged=4, distance="l1")
    assert l1.src_idx.shape == cos.src_idx.shape
    with pytest.raises(ValueError, match="'cosine', 'l1', 'l2'"):
        bipartite_match(metric, 8, 2, distance="dot")


def test_cls_index_formulas():
    assert plan_cls_index(98, 197, 11, ordered=True) == 92
    assert plan_cls_index(98, 197, 0, ordered=True) == 98
    assert plan_cls_index(98, 197, 5, ordered=False) == (98 * (98 - 5)) // 98


# ============================================================================================ config
@pytest.mark.parametrize("field,valid", [
    ("mode", ("merge", "prune")),
    ("metric", ("x", "B", "C", "delta")),
    ("distance", ("cosine", "l1", "l2")),
    ("reduce", ("sum", "mean", "amax", "amin")),
])
def test_config_rejects_unknown_strings(field, valid):
    with pytest.raises(ValueError) as err:
        MergeConfig(**{field: "bogus"})
    message = str(err.value)
    assert "bogus" in message and all(repr(v) in message for v in valid)
    for v in valid:
        MergeConfig(**{field: v})


@pytest.mark.parametrize("kwargs", [
    dict(num_merged=-1), dict(num_merged=(1, -2)), dict(num_merged=1.5), dict(interval=0), dict(choose=0),
    dict(final_tokens=1),
])
def test_config_rejects_bad_numbers(kwargs):
    with pytest.raises(ValueError):
        MergeConfig(**kwargs)


def test_num_merged_list_must_match_merging_layers():
    config = MergeConfig(num_merged=(1, 2))
    with pytest.raises(ValueError, match="2 entries .* 11 layers"):
        config.schedule(197, 24)
    with pytest.raises(ValueError, match="entries"):
        apply_merge(make_model(), MergeConfig(num_merged=(1, 2)))  # the test model merges at layer 2 only
    sched = MergeConfig(num_merged=(3,)).schedule(17, 4)
    assert [s.num_merged for s in sched] == [0, 0, 3, 0]


def test_merging_layers():
    assert MergeConfig().merging_layers(24) == list(range(2, 24, 2))
    assert MergeConfig(odd=True).merging_layers(24) == list(range(1, 24, 2))
    assert MergeConfig(interval=4).merging_layers(24) == [4, 8, 12, 16, 20]
    assert MergeConfig(interval=4, odd=True).merging_layers(24) == [3, 7, 11, 15, 19, 23]


def test_config_round_trip():
    config = MergeConfig(num_merged=(1, 2, 3), interval=7, metric="delta", final_tokens=9)
    assert MergeConfig.from_dict(config.to_dict()) == config


# ============================================================================================ official trace
S_TRACE = [(186, 92), (175, 86), (164, 80), (153, 74), (142, 68), (131, 62), (120, 56), (109, 50), (98, 44),
           (87, 39), (76, 34)]


def after_merges(records_or_schedule):
    """(tokens, cls) after each merging layer 2, 4, ..., 22, read from trace records or a schedule."""
    if isinstance(records_or_schedule[0], dict):  # trace: record i+1 holds what layer i's merge produced
        return [(r["tokens"], r["cls_index"]) for r in records_or_schedule[3:24:2]]
    return [(s.tokens_out, s.cls_out) for s in records_or_schedule if s.merging]


def test_paper_schedules_match_the_official_trace():
    for name in ("vim_small_patch16_224", "vim_base_patch16_224"):
        assert after_merges(MergeConfig.paper(name).schedule(197, 24)) == S_TRACE
    ti = after_merges(MergeConfig.paper("vim_tiny_patch16_224").schedule(197, 24))
    assert ti[:2] == [(192, 95), (187, 92)] and ti[-2:] == [(147, 68), (76, 35)]
    no_compare = MergeConfig.paper("vim_tiny_patch16_224", final_tokens=None).schedule(197, 24)
    assert after_merges(no_compare)[-1] == (142, 65)
    last = MergeConfig.paper("vim_tiny_patch16_224").schedule(197, 24)[22]
    assert (last.layer, last.requested, last.num_merged) == (22, 71, 71)


@pytest.fixture(scope="module")
def narrow_vim_224():
    """Official depth and token count at width 16: token counts do not depend on width."""
    torch.manual_seed(0)
    return create_model("vim_small_patch16_224", embed_dim=16).eval()


@pytest.mark.parametrize("name", ["vim_small_patch16_224", "vim_tiny_patch16_224"])
def test_trace_matches_official_trace_and_schedule(narrow_vim_224, name):
    config = MergeConfig.paper(name)
    apply_merge(narrow_vim_224, config)
    try:
        records = trace_tokens(narrow_vim_224, images(1, 224))
    finally:
        remove_merge(narrow_vim_224)
    traced = after_merges(records)
    if name == "vim_small_patch16_224":
        assert traced == S_TRACE
    else:
        assert traced[:2] == [(192, 95), (187, 92)] and traced[-2:] == [(147, 68), (76, 35)]
    sched = config.schedule(197, 24)
    assert [(r["tokens"], r["cls_index"]) for r in records[:24]] == [(s.tokens_in, s.cls_in) for s in sched]
    assert (records[24]["tokens"], records[24]["cls_index"]) == (sched[-1].tokens_out, sched[-1].cls_out)


def test_too_many_tokens_clamp_with_warning():
    model = make_model()
    config = MergeConfig(num_merged=10, interval=1)
    sched = config.schedule(17, 4)
    assert [(s.tokens_in, s.requested, s.num_merged) for s in sched[1:]] == [(17, 10, 8), (9, 10, 4), (5, 10, 2)]
    with pytest.warns(UserWarning, match="clamped to 8"):
        apply_merge(model, config)
    records = trace_tokens(model, images())
    assert [r["tokens"] for r in records] == [17, 17, 9, 5, 3]  # entering each layer, then the head
    assert model(images()).shape == (2, 10)


# ============================================================================================ model patch
@pytest.mark.parametrize("config", [MergeConfig(), MergeConfig(num_merged=0, interval=1, metric="B")])
def test_merging_zero_tokens_is_identity(config):
    model = make_model()
    x = images()
    with torch.no_grad():
        reference = model(x)
        apply_merge(model, config)
        assert torch.equal(model(x), reference)


def test_remove_merge_restores_exact_logits():
    model = make_model()
    x = images()
    with torch.no_grad():
        reference = model(x)
        apply_merge(model, MergeConfig(num_merged=3, interval=1))
        merged = model(x)
        remove_merge(model)
        restored = model(x)
    assert not torch.allclose(merged, reference)
    assert torch.equal(restored, reference)
    assert model.merge_config is None and all(type(layer) is rmeeto.models.vim.Block for layer in model.layers)


def test_state_dict_is_unchanged_by_merging():
    plain = make_model(seed=1)
    merged = apply_merge(make_model(seed=2), MergeConfig(num_merged=3, interval=1, metric="delta"))
    assert list(merged.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(merged.state_dict(), strict=True)
    merged.load_state_dict(plain.state_dict(), strict=True)


@pytest.mark.parametrize("metric", ["x", "B", "C", "delta"])
def test_gradient_reaches_every_parameter(metric):
    model = apply_merge(make_model(drop_path_rate=0.1).train(), MergeConfig(num_merged=3, interval=1, metric=metric))
    loss = model(images()).logsumexp(-1).mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def _plan_inputs(model, config, x):
    """Run a merged model with source tracking and capture, at the merging layer 2, the metric it matched on
    and the source map it produced."""
    captured = {}

    def before(module, args):
        hidden, _, state = args
        captured["metric"] = hidden if config.metric == "x" else state.metric
        captured["cls"] = state.cls_index

    def after(module, args, output):
        captured["source"] = output[2].source

    apply_merge(model, config)
    h1 = model.layers[2].register_forward_pre_hook(before)
    h2 = model.layers[2].register_forward_hook(after)
    try:
        with torch.no_grad():
            model.forward_tokens(x, track_source=True)
    finally:
        h1.remove(), h2.remove()
    return captured


@pytest.mark.parametrize("metric,width", [("B", 16), ("C", 16), ("delta", 64)])
def test_scan_metrics_drive_the_plan(metric, width):
    model, x = make_model(), images()
    base = _plan_inputs(model, MergeConfig(num_merged=4), x)
    got = _plan_inputs(model, MergeConfig(num_merged=4, metric=metric), x)
    assert got["metric"].shape == (2, 17, width)
    plan = bipartite_match(got["metric"], got["cls"], 4)
    expected = merge_tokens(torch.eye(17).expand(2, -1, -1), plan, "amax")
    assert torch.equal(got["source"], expected)
    assert not torch.equal(got["source"], base["source"])  # a different metric gives a different plan
    assert model(x).shape == (2, 10)


def test_merge_norm_fold_is_chosen_for_inference_only(monkeypatch):
    """A merging block hands its residual add + RMSNorm to the fused merge (one kernel) only when nothing needs
    a gradient, drop path is off (eval), the residual is float32 and the policy has both the norm kernel and
    the fold on; the kernels themselves are checked bit for bit on GPU and under the interpreter."""
    from rmeeto.merge import MergingBlock
    from rmeeto.ops import policy

    model = create_model("vim_digits_patch4_32", drop_path_rate=0.1)
    apply_merge(model, MergeConfig(num_merged=2))
    block = [b for b in model.layers if isinstance(b, MergingBlock)][-1]
    assert block.drop_path.p > 0
    switches = {"norm": True, "merge_norm": True}
    monkeypatch.setattr(policy, "use_fused", lambda op, x, backend="auto": switches[op] and backend != "torch")
    C = model.embed_dim
    h, r = torch.randn(2, 9, C), torch.randn(2, 9, C)

    def folds(residual):  # as the block's forward asks: with the backend of its scan
        return block._folds_norm(h, residual, policy.op_backend(block.mixer.scan_backend))

    model.eval()
    assert not folds(r)  # the norm weight needs a gradient
    with torch.no_grad():
        assert folds(r)
        assert not folds(r.half())
        for op in switches:
            switches[op] = False
            assert not folds(r)
            switches[op] = True
        model.set_scan_backend("chunked")  # that model's PyTorch path: no kernel at all
        assert not folds(r)
        model.set_scan_backend("auto")
        model.train()  # drop path in effect
        assert not folds(r)
    model.eval().requires_grad_(False)
    assert folds(r)  # frozen weights, plain tensors: nothing to differentiate


def test_final_tokens_at_or_above_what_reaches_the_last_merging_layer_warns():
    import warnings

    model = rmeeto.create_model("vim_test_patch4_16")  # 17 tokens; r=1 every 2nd layer merges at layer 2 only
    with pytest.warns(UserWarning, match="final_tokens=17: only 17 tokens reach the last merging layer"):
        apply_merge(model, MergeConfig(num_merged=1, final_tokens=17))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply_merge(model, MergeConfig(num_merged=1, final_tokens=16))  # merges one: no warning

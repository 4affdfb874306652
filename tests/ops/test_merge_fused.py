"""The fused CUDA merge (rmeeto.ops.triton.merge) against the PyTorch matching and merge.

On CPU: the destination-map formulation for every layout (the kernels themselves run through Triton's
interpreter in tests/test_interpreted.py). On CUDA: the compiled kernels, values and gradients."""

import pytest
import torch

from rmeeto.merge import bipartite_match, merge_streams
from rmeeto.ops.triton import merge as merge_triton


def merge_streams_by_map(streams, size, dest, num_out):
    """Reference of the fused kernel in PyTorch (index_add over the destination map); any device."""
    x0 = streams[0]
    batch, L = dest.shape
    s = size if size is not None else torch.ones(batch, L, 1, device=x0.device, dtype=torch.float32)
    s = s.float()
    new_s = torch.zeros(batch, num_out, 1, device=x0.device, dtype=torch.float32).scatter_add_(1, dest[..., None], s)
    outs = []
    for x in streams:
        acc = torch.zeros(batch, num_out, x.shape[-1], device=x.device, dtype=torch.float32)
        acc.scatter_add_(1, dest[..., None].expand(-1, -1, x.shape[-1]), x.float() * s)
        outs.append((acc / new_s).to(x.dtype))
    return outs, new_s


def _case(batch, L, C, cls_index, r, ordered, with_size, seed, device="cpu", dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, L, C, generator=g).to(device, dtype)
    residual = torch.randn(batch, L, C, generator=g).to(device)
    size = torch.randint(1, 5, (batch, L, 1), generator=g).float().to(device) if with_size else None
    plan = bipartite_match(hidden, cls_index, r, ordered=ordered)
    return hidden, residual, size, plan


@pytest.mark.parametrize("ordered", [True, False])
@pytest.mark.parametrize("L,cls_index,r", [(17, 8, 4), (17, 0, 8), (16, 15, 3), (197, 98, 11), (9, 4, 0), (76, 37, 37)])
@pytest.mark.parametrize("with_size", [False, True])
def test_destination_map_reproduces_merge_streams(L, cls_index, r, ordered, with_size):
    hidden, residual, size, plan = _case(3, L, 6, cls_index, r, ordered, with_size, seed=L + r)
    (h_ref, r_ref), s_ref = merge_streams([hidden, residual], size, plan, "sum")
    dest = merge_triton.destination_map(plan, L, ordered)
    n_out = L - plan.src_idx.shape[1]
    assert dest.shape == (3, L) and int(dest.min()) >= 0 and int(dest.max()) == n_out - 1
    # every output slot receives at least one token; the class token lands where the plan says
    assert torch.all(torch.zeros(3, n_out, dtype=torch.long).scatter_add_(1, dest, torch.ones_like(dest)) >= 1)
    assert torch.all(dest[:, cls_index] == plan.new_cls_index)
    (h, r_), s = merge_streams_by_map([hidden, residual], size, dest, n_out)
    torch.testing.assert_close(s, s_ref)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(r_, r_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not merge_triton.is_available(), reason="needs CUDA and Triton")
@pytest.mark.gpu
@pytest.mark.parametrize("ordered", [True, False])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("L,cls_index,r,C", [(197, 98, 11, 384), (186, 92, 11, 768), (87, 43, 11, 192), (17, 8, 8, 40)])
@pytest.mark.parametrize("use_matcher", [False, True])
def test_fused_kernel_matches_merge_streams(L, cls_index, r, C, ordered, dtype, use_matcher):
    """Both fused entry points (plan from PyTorch; plan from the matching kernel) against merge_streams. The
    matching kernel sums scores in another order than cuBLAS; on random data no near-tie is that close."""
    if use_matcher and dtype != torch.float32:
        pytest.skip("half-precision plans are checked by test_match_plan_half_is_a_valid_plan")
    for with_size in (False, True):
        hidden, residual, size, plan = _case(4, L, C, cls_index, r, ordered, with_size, seed=C, device="cuda", dtype=dtype)
        hidden.requires_grad_(True)
        residual.requires_grad_(True)
        (h_ref, r_ref), s_ref = merge_streams([hidden, residual], size, plan, "sum")
        if use_matcher:
            r = plan.src_idx.shape[1]
            (h, r_), s = merge_triton.match_merge_fused(
                hidden, residual, size, hidden, cls_index, r, plan.new_cls_index, ordered)
        else:
            (h, r_), s = merge_triton.merge_streams_fused(hidden, residual, size, plan, ordered)
        tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(s, s_ref)
        torch.testing.assert_close(h, h_ref, **tol)
        torch.testing.assert_close(r_, r_ref, rtol=1e-5, atol=1e-6)
        gh, gr = torch.randn_like(h), torch.randn_like(r_)
        ref_grads = torch.autograd.grad((h_ref * gh).sum() + (r_ref * gr).sum(), [hidden, residual])
        grads = torch.autograd.grad((h * gh).sum() + (r_ * gr).sum(), [hidden, residual])
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a.float(), b.float(), **tol)


@pytest.mark.skipif(not merge_triton.is_available(), reason="needs CUDA and Triton")
@pytest.mark.gpu
@pytest.mark.parametrize("ordered", [True, False])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("L,cls_index,r,C", [(197, 98, 11, 384), (186, 92, 11, 768), (197, 98, 5, 192), (17, 8, 8, 40)])
@pytest.mark.parametrize("norm_lists_only", [False, True])
def test_merge_add_norm_gives_the_bits_of_merge_then_norm(L, cls_index, r, C, ordered, dtype, norm_lists_only,
                                                          monkeypatch):
    """The inference kernel (merge, residual add, RMSNorm in one) against the merge kernel followed by the norm
    kernel, compiled: the same bits, sizes or none; also with the matching writing only the lists the merge + norm
    kernel reads (``norm_lists_only``)."""
    from rmeeto.ops.triton import norm as norm_triton

    monkeypatch.setitem(merge_triton.MATCH_CONFIG, "norm_lists_only", norm_lists_only)
    for with_size in (False, True):
        hidden, residual, size, plan = _case(16, L, C, cls_index, r, ordered, with_size, seed=C, device="cuda",
                                             dtype=dtype)
        weight = (torch.rand(C, device="cuda") + 0.5).to(dtype)
        with torch.no_grad():
            (hm, rm), s1 = merge_triton.match_merge_fused(
                hidden, residual, size, hidden, cls_index, r, plan.new_cls_index, ordered)
            ro1, y1, _ = norm_triton._norm_fwd(hm, rm, weight, None, 1e-5)
            ro2, y2, s2 = merge_triton.match_merge_add_norm(
                hidden, residual, size, hidden, cls_index, r, plan.new_cls_index, ordered, weight, 1e-5)
        assert torch.equal(s1, s2)
        assert torch.equal(ro1, ro2), (ro1 - ro2).abs().max()
        assert torch.equal(y1, y2), (y1.float() - y2.float()).abs().max()


@pytest.mark.skipif(not merge_triton._HAS_TRITON, reason="needs Triton")
def test_one_launch_plan_kind_by_shape():
    """Which plan the one-launch kernel makes by default: compact (over RB merged slots) where every source fits
    its one tile and at most ``compact_max_r`` merge (Vim's merging layers: r=5 / 11), all-pairs where more do
    (Vim-Ti's layer 22: 147 -> 76 tokens), the tiled plan past one tile (513 tokens)."""
    def kind(L, C, r):
        meta = merge_triton.match_spec(torch.empty(2, L, C, dtype=torch.float16), L // 2, r, L // 2, True)[2]
        return meta["ONE_TILE"], meta["RB"]

    assert kind(197, 384, 11) == (True, 16)
    assert kind(197, 192, 5) == (True, 16)
    assert kind(87, 384, 11) == (True, 16)  # 43 sources: the small tiles, still one tile
    assert kind(197, 384, 32) == (True, 32)
    assert kind(147, 192, 71) == (True, 0)
    assert kind(513, 384, 11) == (False, 0)
    metric = torch.empty(2, 197, 384, dtype=torch.float16)
    assert merge_triton.match_spec(metric, 98, 11, 92, True, norm_only=True)[2]["NORM_ONLY"] is True  # on: default
    found = dict(merge_triton.MATCH_CONFIG)
    try:
        merge_triton.MATCH_CONFIG["compact_max_r"] = None
        assert kind(197, 384, 11) == (False, 0)  # below one_tile_min_r: the tiled plan
    finally:
        merge_triton.MATCH_CONFIG.update(found)


@pytest.mark.parametrize("ordered", [True, False])
@pytest.mark.parametrize("L,cls_index,r", [(17, 8, 4), (16, 15, 3), (197, 98, 11), (9, 4, 0)])
def test_token_lists_emulated_kernel(L, cls_index, r, ordered):
    """What the fused kernel reads (base token per slot, sources and their slots), emulated in Python."""
    hidden, residual, size, plan = _case(2, L, 5, cls_index, r, ordered, True, seed=7)
    (h_ref, r_ref), s_ref = merge_streams([hidden, residual], size, plan, "sum")
    dest = merge_triton.destination_map(plan, L, ordered)
    n_out = L - plan.src_idx.shape[1]
    base, src, sdst = merge_triton._token_lists(dest, merge_triton._source_tokens(plan), n_out)
    for b in range(2):
        for p in range(n_out):
            toks = [int(base[b, p])] + [int(src[b, k]) for k in range(src.shape[1]) if int(sdst[b, k]) == p]
            w = size[b, toks, 0]
            torch.testing.assert_close(w.sum(), s_ref[b, p, 0])
            torch.testing.assert_close((hidden[b, toks] * w[:, None]).sum(0) / w.sum(), h_ref[b, p])
            torch.testing.assert_close((residual[b, toks] * w[:, None]).sum(0) / w.sum(), r_ref[b, p])


def _tie_metric(batch, L, C, seed):
    """Rows that are multiples of one of 3 basis vectors: most sources share a few destinations (long lists)."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.nn.functional.one_hot(torch.randint(0, 3, (batch, L), generator=g), C)
    return (basis * torch.randint(1, 4, (batch, L, 1), generator=g)).float()


@pytest.mark.parametrize("ordered", [True, False])
@pytest.mark.parametrize("L,cls_index,r", [(17, 8, 4), (16, 15, 3), (197, 98, 11), (9, 4, 0), (1569, 0, 88)])
@pytest.mark.parametrize("ties", [False, True])
def test_source_lists_walk_each_slots_sources_in_plan_order(L, cls_index, r, ordered, ties):
    """source_lists (what the merge kernel walks): from the head of slot p, following next visits exactly the
    merged sources whose slot is p, in plan order (the order of a scan of all sources, so sums are bitwise
    those of that scan); tokens that are not merged sources have no successor. Walking the lists and adding
    in that order gives merge_streams' result."""
    batch, C = 2, 6
    hidden, residual, size, _ = _case(batch, L, C, cls_index, r, ordered, True, seed=L + r)
    metric = _tie_metric(batch, L, C, seed=r) if ties else hidden
    plan = bipartite_match(metric, cls_index, r, ordered=ordered)
    (h_ref, r_ref), s_ref = merge_streams([hidden, residual], size, plan, "sum")
    dest = merge_triton.destination_map(plan, L, ordered)
    n_out = L - plan.src_idx.shape[1]
    base, src, sdst = merge_triton._token_lists(dest, merge_triton._source_tokens(plan), n_out)
    head, nxt = merge_triton.source_lists(src, sdst, n_out, L)
    assert head.shape == (batch, n_out) and nxt.shape == (batch, L)
    assert head.dtype == nxt.dtype == torch.int32
    longest = 0
    for b in range(batch):
        srcs, slots = src[b].tolist(), sdst[b].tolist()
        expected = {p: [] for p in range(n_out)}
        for t, p in zip(srcs, slots):
            expected[p].append(t)
        not_merged = torch.ones(L, dtype=torch.bool)
        not_merged[src[b].long()] = False
        assert torch.all(nxt[b][not_merged] == -1)
        h_out, r_out, s_out = [], [], []
        for p in range(n_out):
            walk, t = [], int(head[b, p])
            while t >= 0 and len(walk) <= len(srcs):
                walk.append(t)
                t = int(nxt[b, t])
            assert walk == expected[p], (b, p)
            longest = max(longest, len(walk))
            # the kernel's sum: the kept token first, then the walk, in float32
            toks = [int(base[b, p])] + walk
            w = size[b, toks, 0]
            h_out.append((hidden[b, toks] * w[:, None]).sum(0) / w.sum())
            r_out.append((residual[b, toks] * w[:, None]).sum(0) / w.sum())
            s_out.append(w.sum())
        torch.testing.assert_close(torch.stack(s_out), s_ref[b, :, 0])
        torch.testing.assert_close(torch.stack(h_out), h_ref[b], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(torch.stack(r_out), r_ref[b], rtol=1e-5, atol=1e-6)
    if ties and r >= 11:
        assert longest > 2  # the tie-heavy metric does make lists longer than one step


# ---------------------------------------------------------------------------------- the matching kernel
# (on CPU through Triton's interpreter: tests/test_interpreted.py)
@pytest.mark.skipif(not merge_triton.is_available(), reason="needs CUDA and Triton")
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("ordered", [True, False])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("L, C", [(197, 192), (197, 384), (109, 384)])
def test_match_plan_half_is_a_valid_plan(dtype, ordered, ties, L, C):
    """In fp16/bf16 the scores are rounded to the metric's dtype, so the kernel and cuBLAS (other summation
    order) may break near-ties differently. Check the kernel's plan against the definition instead, with
    scores recomputed in float64 from the same rounded rows: every merged source's partner is a best
    destination and every merged source scores at least as high as every kept one (both within one rounding
    step); the lists are a consistent permutation; and where no near-tie exists the plan is PyTorch's. The partner
    step loads whole rows once (``rows_max_elems``) at 192 channels (Vim-Ti) and at 384 in 64-source tiles (Vim-S's
    last merging layers, 109 tokens), and steps over channels at 384 in 128-source tiles (197 tokens)."""
    from rmeeto.merge import plan_cls_index

    torch.manual_seed(3)
    B, r = 8, 11
    cls = (L - 1) // 2
    m = (torch.randint(0, 3, (B, L, C), device="cuda") if ties else torch.randn(B, L, C, device="cuda")).to(dtype)
    new_cls = plan_cls_index(cls, L, r, ordered)
    dest, base, src, sdst = merge_triton.match_plan(m, cls, r, new_cls, ordered)
    q = torch.arange(L - 1, device="cuda")
    tok = q + (q >= cls).long()
    ta, tb = tok[0::2], tok[1::2]
    mf = m.float()
    a = (mf * (1.0 / mf.norm(dim=-1, keepdim=True))).to(dtype).double()
    scores = a[:, ta] @ a[:, tb].transpose(1, 2)  # [B, na, nb]
    best = scores.max(-1).values
    eps = 2 * torch.finfo(dtype).eps
    n_out = L - r
    for b in range(B):
        merged_tok = src[b].long()
        j = (merged_tok - (merged_tok > cls).long()) // 2  # source index of each merged token
        # each merged source goes to a best destination (the slot of that destination token)
        dst_tok = tb[(scores[b, j] >= best[b, j, None] - eps).nonzero()[:, 1]]
        assert set(sdst[b].tolist()) <= set(dest[b, tb].tolist())
        for k in range(r):
            slot = int(sdst[b, k])
            cands = tb[(scores[b, j[k]] >= best[b, j[k]] - eps)]
            assert slot in dest[b, cands].tolist()
        # merged sources score at least as high as kept ones, and come in descending order
        kept = torch.ones(len(ta), dtype=torch.bool, device="cuda")
        kept[j] = False
        assert best[b, j].min() >= best[b, kept].max() - eps
        assert torch.all(best[b, j][1:] <= best[b, j][:-1] + eps)
        # every slot has exactly one kept token; the destination map agrees with the lists
        assert sorted(base[b].tolist()) == sorted(set(range(L)) - set(merged_tok.tolist()))
        assert torch.equal(dest[b, base[b].long()], torch.arange(n_out, device="cuda"))
        assert int(dest[b, cls]) == new_cls and int(base[b, new_cls]) == cls
        assert torch.equal(dest[b, merged_tok], sdst[b].long())
        del dst_tok
    if not ties:  # random rows: compare with the PyTorch plan where it is unambiguous
        from rmeeto.merge import bipartite_match

        plan = bipartite_match(m, cls, r, ordered=ordered)
        ref = merge_triton.destination_map(plan, L, ordered)
        same = (ref == dest).all(-1).float().mean().item()
        assert same >= 0.75, f"only {same:.0%} of the batch has PyTorch's plan"


@pytest.mark.skipif(not merge_triton.is_available(), reason="needs CUDA and Triton")
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("ordered", [True, False])
@pytest.mark.parametrize("C", [192, 384, 768])
def test_one_launch_match_equals_two_kernels(dtype, ordered, C):
    """The one-program-per-batch-element match kernel (best partner and plan in one launch, every tiling in
    MATCH_TILES) writes the same plan and lists as the best-partner kernel followed by the plan kernel, at the
    shapes of Vim-Ti / S / B's merging layers (first and last: 197 and 87 tokens) and a 513-token sequence
    (256 sources, the longest the one-launch kernel takes: several source tiles in both of its steps), with the
    partner's row norms in one loop or two and (default tilings) its dot unrolled, the plan tiled, in registers over
    all pairs of sources, or compact. With 16-bit metrics whose source tile fits ``rows_max_elems`` the one-launch
    kernel loads whole rows once (its norms summed in another order than the channel steps'): those plans are
    compared too, on these random metrics (no near-ties: as the interpreter test compares with PyTorch's)."""
    from rmeeto.merge import plan_cls_index

    found = dict(merge_triton.MATCH_CONFIG)
    try:
        for B, L, cls, r in [(16, 197, 98, 11), (16, 87, 43, 11), (3, 513, 256, 40)]:
            torch.manual_seed(L + C)
            m = torch.randn(B, L, C, device="cuda").to(dtype)
            new_cls = plan_cls_index(cls, L, r, ordered)
            merge_triton.MATCH_CONFIG.update(fused=False, one_j=False)
            ref = merge_triton._match_lists(m, cls, r, new_cls, ordered)
            merged_tok = ref[2].long()
            # every tiling with the partner's row norms in one loop and in one loop per set; the default large
            # and wide tilings also with its dot two channel steps per loop trip
            defaults = (found["large"], found["wide"])
            plain = dict(one_j=True, dot_unroll=1, one_tile_min_r=None, compact_max_r=None, rows_max_elems=None)
            rows = found["rows_max_elems"]
            for tiles in merge_triton.MATCH_TILES:
                variants = [plain, dict(plain, one_j=False)]
                if tiles in defaults:  # the dot unrolled; the plan in registers, all-pairs or compact
                    variants += [dict(plain, dot_unroll=2), dict(plain, one_tile_min_r=0),
                                 dict(plain, compact_max_r=64)]
                if tiles in defaults or tiles == found["small"]:  # whole rows, where the tile fits
                    variants += [dict(plain, compact_max_r=64, rows_max_elems=rows),
                                 dict(plain, one_tile_min_r=0, rows_max_elems=rows)]
                for v in variants:
                    merge_triton.MATCH_CONFIG.update(fused=True, small=tiles, large=tiles, wide=tiles, **v)
                    got = merge_triton._match_lists(m, cls, r, new_cls, ordered)
                    for name, x, y in zip(("dest", "base", "src", "sdst", "head"), got, ref):
                        assert torch.equal(x, y), (name, tiles, v, B, L)
                    assert torch.equal(got[5].gather(1, merged_tok), ref[5].gather(1, merged_tok)), \
                        ("next", tiles, v, B, L)
    finally:
        merge_triton.MATCH_CONFIG.update(found)

"""Triton kernels run on CPU through Triton's interpreter (TRITON_INTERPRET=1, in a subprocess, since the
variable must be set before Triton is imported), so machines without a GPU (CI) test the kernels' logic too.
Skipped where CUDA is available: the GPU tests exercise the compiled kernels there. Note: the interpreter
truncates float32 -> bfloat16 instead of rounding, so bf16 is left to the GPU tests."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytestmark = [
    pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA machines test the compiled kernels instead"),
]
triton = pytest.importorskip("triton")


def run_interpreted(code: str) -> None:
    env = dict(os.environ, TRITON_INTERPRET="1")
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    env["PYTHONPATH"] = os.pathsep.join([src] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


# Prepended to the proj and out_proj kernels' scripts. within_rounding: a GEMM's fp16 result against a @ b.T summed
# in float32 in any order and rounded once. mixer_takes_the_op: a BiMambaMixer on CPU tensors with the op switched
# on (its switch read as for a CUDA tensor) takes the op once without a gradient (equal to the op-off path to
# rounding, metric too when one is exported), not at all with a gradient (that path's bits), and not with a forward
# hook on the op's module; returns the failures, the spy and the switch restored.
MIXER_OP_CHECK = textwrap.dedent("""
    def within_rounding(got, a, b):
        exact = a.double() @ b.double().T
        bound = a.shape[-1] * 2.0 ** -24 * (a.double().abs() @ b.double().abs().T)
        spacing = (got.double().abs() * 2.0 ** -10).clamp_min(2.0 ** -24)
        return bool(((got.double() - exact).abs() <= 0.5 * spacing + bound).all())

    def mixer_takes_the_op(op, module, owner, name, export=None):
        import torch
        from rmeeto.models.vim import BiMambaMixer
        from rmeeto.ops import policy
        use_fused, real, calls, bad = policy.use_fused, getattr(owner, name), [], []
        policy.use_fused = lambda o, x, backend="auto": (
            policy._fused[op] if o == op and backend == "auto" else use_fused(o, x, backend))
        def spy(*a, **k):
            calls.append(1)
            return real(*a, **k)
        setattr(owner, name, spy)
        mixer = BiMambaMixer(32, d_state=8, scan_backend="chunked").half()
        mixer.scan_backend = "auto"  # the PyTorch conv / scan on CPU, the op switched on above
        h = torch.randn(2, 11, 32).half()
        kw = {"export": export} if export else {}
        close = lambda a, b: torch.allclose(a, b, atol=2e-3, rtol=2e-3)
        with torch.no_grad():
            out, metric = mixer(h, **kw)
            policy.set_fused(op, False)
            ref, ref_metric = mixer(h, **kw)
            policy.set_fused(op, True)
        if len(calls) != 1 or not close(out, ref) or (export and not close(metric, ref_metric)):
            bad.append((op, "mixer no grad", len(calls), (out - ref).abs().max().item()))
        calls.clear()
        with torch.enable_grad():
            out_g, _ = mixer(h)
        if calls or not torch.equal(out_g.detach(), ref):
            bad.append((op, "mixer with grad", len(calls)))
        hooked = []
        handle = getattr(mixer, module).register_forward_hook(lambda m, i, o: hooked.append(1))
        with torch.no_grad():
            out_h, _ = mixer(h)
        handle.remove()
        if calls or not hooked or not torch.equal(out_h, ref):
            bad.append((op, "mixer with a hook", len(calls), len(hooked)))
        setattr(owner, name, real)
        policy.use_fused = use_fused
        return bad
""")


def test_match_plan_equals_pytorch_plan(full):
    """The matching kernels make exactly bipartite_match's plan (fp32 and fp16 metrics, both layouts,
    tie-heavy metrics included: ties are broken the same way); the per-slot source lists are those of
    source_lists on PyTorch's plan; the fused merge matches merge_streams, gradients included. Long
    sequences (video: 785 and 1569 tokens, r=88, batch 1-2) run the plan kernel over many source tiles and
    more merged sources than one chunk. Sequences of at most 256 sources take the one-launch match kernel;
    in the full tier they also run through the two kernels, and every tiling of both paths is checked. Where
    every source fits the one-launch kernel's tile, its plan is made in registers over all pairs of sources
    (``one_tile_min_r``), in registers over the merged sources (``compact_max_r``) or by the tiled plan steps (by
    default as the number merged decides: here forced each way): the default tier takes the three in turn over
    the cases, the full tier runs all three. 16-bit metrics whose source tile fits ``rows_max_elems`` take the
    partner step over whole rows loaded once; every one-launch tiling is also run with it off (channel steps).
    (Scores are summed in another order than PyTorch's matmul, so tie-heavy data is built to give exact
    scores.)"""
    run_interpreted(f"""
    import sys, torch
    from rmeeto.merge import bipartite_match, merge_streams
    from rmeeto.ops.triton import merge as mt
    torch.manual_seed(0)
    failures = []
    min_r = mt.MATCH_CONFIG["one_tile_min_r"]
    cases = [(2, 17, 24, 8, 4), (2, 17, 24, 0, 8), (2, 16, 20, 15, 3), (2, 197, 40, 98, 11), (2, 76, 33, 37, 37),
             (1, 150, 16, 149, 30), (1, 3, 16, 1, 1), (2, 130, 70, 64, 20)]
    long_cases = [(1, 1569, 16, 0, 88, torch.float16), (2, 785, 16, 392, 88, torch.float32)]
    if {full!r}:  # the full tier: every case in both dtypes with every kind of tie, both long sequences
        runs = [(dtype, case, ties) for dtype in (torch.float32, torch.float16) for case in cases
                for ties in (False, True, "signed")]
        runs += [(dtype, case, ties) for *case, dtype in long_cases for ties in (False, True)]
    else:  # every case and every kind of tie once, the dtypes alternating; one long sequence
        runs = [((torch.float32, torch.float16)[(i + j) % 2], case, ties) for i, case in enumerate(cases)
                for j, ties in enumerate((False, True, "signed"))]
        runs += [(long_cases[1][-1], tuple(long_cases[1][:-1]), True)]
    if {full!r}:  # the short cases again through the two kernels (best partner, plan), and through the one-launch
        # kernel with its tiled plan (all of them fit its tile: by default the plan in registers)
        short = [(dtype, case, ties) for dtype, case, ties in runs if case[1] // 2 <= mt._LONG_SOURCES]
        runs += [(dtype, case, ties, False) for dtype, case, ties in short]
        runs += [(dtype, case, ties, "tiled") for dtype, case, ties in short]
        runs += [(dtype, case, ties, "compact") for dtype, case, ties in short]
    found = dict(mt.MATCH_CONFIG)
    for n_run, (dtype, (B, L, C, cls, r), ties, *two) in enumerate(runs):
        tag = two[0] if two else None
        mt.MATCH_CONFIG["fused"] = tag is not False
        # the one-launch kernel's plan: all-pairs in registers, compact (over the merged sources), or tiled
        kinds = ("registers",) if {full!r} else ("registers", "compact", "tiled")
        kind = tag if isinstance(tag, str) else kinds[n_run % len(kinds)]
        mt.MATCH_CONFIG["one_tile_min_r"] = 0 if kind == "registers" else None
        mt.MATCH_CONFIG["compact_max_r"] = 256 if kind == "compact" else None
        for ordered in (True, False):
            # ties: every row a positive multiple of one of 3 basis vectors, so scores are exactly 0 or 1
            # whatever the summation order, and most sources tie for the best partner and best score
            # ("signed": multiples of either sign, so best scores of -1 and 0 occur in short sequences)
            if ties:
                m = torch.nn.functional.one_hot(torch.randint(0, 3, (B, L)), C) * torch.randint(1, 4, (B, L, 1))
                if ties == "signed":
                    m = m * (torch.randint(0, 2, (B, L, 1)) * 2 - 1)
            else:
                m = torch.randn(B, L, C)
            m = m.to(dtype)
            plan = bipartite_match(m, cls, r, ordered=ordered)
            n = plan.src_idx.shape[1]
            dest = mt.destination_map(plan, L, ordered)
            ref = (dest,) + mt._token_lists(dest, mt._source_tokens(plan), L - n)
            lists = mt._match_lists(m, cls, n, plan.new_cls_index, ordered)  # match_plan's four, then the lists
            got = (lists[0],) + tuple(x.view_as(y) for x, y in zip(lists[1:4], ref[1:]))
            k_head, k_next = lists[4].view(B, L - n), lists[5].view(B, L)
            if not all(torch.equal(x.long(), y.long()) for x, y in zip(ref, got)):
                failures.append(("plan", dtype, B, L, C, cls, r, ordered, ties))
            # the lists: head of every slot, next of every merged source (other tokens' entries are unused)
            head, nxt = mt.source_lists(ref[2], ref[3], L - n, L)
            merged_tok = ref[2].long()
            if not (torch.equal(k_head, head) and torch.equal(k_next.gather(1, merged_tok), nxt.gather(1, merged_tok))):
                failures.append(("lists", dtype, B, L, C, cls, r, ordered, ties))
    mt.MATCH_CONFIG.update(found)
    # every tiling offered to the benchmark's sweeps makes the same plan: the two-kernel path's best-partner
    # tilings (short sequences take the one-launch kernel by default: switched off here), then the one-launch
    # kernel's tilings (64-source tiles: several tiles in both of its steps), with whole rows (where they fit) and
    # with channel steps
    rows = found["rows_max_elems"]
    sweeps = ([("short", tiles, False, None) for tiles in mt.PARTNER_TILES]
              + [("match", tiles, True, rows) for tiles in mt.MATCH_TILES]
              + [("match, channel steps", tiles, True, None) for tiles in mt.MATCH_TILES])
    for table, tiles, fused, rows_max in sweeps:
        mt.MATCH_CONFIG.update(fused=fused, rows_max_elems=rows_max)
        if fused:
            mt.MATCH_CONFIG.update(small=tiles, large=tiles, wide=tiles)
        else:
            mt.PARTNER_CONFIG["short"] = tiles
        for ties in (False, True):
            m = torch.nn.functional.one_hot(torch.randint(0, 3, (2, 197)), 40) if ties else torch.randn(2, 197, 40)
            m = m.half()
            plan = bipartite_match(m, 98, 11)
            dest = mt.destination_map(plan, 197, True)
            if not torch.equal(mt.match_plan(m, 98, 11, plan.new_cls_index, True)[0], dest):
                failures.append(("tiles", table, tiles, ties))
    mt.PARTNER_CONFIG["short"] = mt.PARTNER_TILES[0]
    mt.MATCH_CONFIG.update(found)
    # the default tiles of 768 channels and more (the dot unrolled), as Vim-B's first merging layer
    m = torch.randn(2, 197, 768).half()
    plan = bipartite_match(m, 98, 11)
    if not torch.equal(mt.match_plan(m, 98, 11, plan.new_cls_index, True)[0], mt.destination_map(plan, 197, True)):
        failures.append(("wide", 768))
    # the whole fused merge with sizes, and its backward
    B, L, C, cls, r = 2, 33, 24, 16, 6
    for ordered in (True, False):
        h = torch.randn(B, L, C, requires_grad=True)
        res = torch.randn(B, L, C, requires_grad=True)
        size = torch.randint(1, 4, (B, L, 1)).float()
        plan = bipartite_match(h, cls, r, ordered=ordered)
        (h1, r1), s1 = merge_streams([h, res], size, plan, "sum")
        (h2, r2), s2 = mt.match_merge_fused(h, res, size, h, cls, r, plan.new_cls_index, ordered)
        g1 = torch.autograd.grad((h1 * 1.5).sum() + (r1 ** 2).sum(), [h, res])
        g2 = torch.autograd.grad((h2 * 1.5).sum() + (r2 ** 2).sum(), [h, res])
        for a, b in zip((h1, r1, s1) + g1, (h2, r2, s2) + g2):
            if not torch.allclose(a, b, rtol=1e-5, atol=1e-6):
                failures.append(("merge", ordered))
    # a long sequence whose tie-heavy metric routes up to ~30 sources to one slot (long lists to walk)
    B, L, C, cls, r = 1, 785, 16, 392, 88
    for ordered in (True, False):
        metric = torch.nn.functional.one_hot(torch.randint(0, 3, (B, L)), C) * torch.randint(1, 4, (B, L, 1))
        metric = metric.float()
        h = torch.randn(B, L, C, requires_grad=True)
        res = torch.randn(B, L, C, requires_grad=True)
        size = torch.randint(1, 4, (B, L, 1)).float()
        plan = bipartite_match(metric, cls, r, ordered=ordered)
        (h1, r1), s1 = merge_streams([h, res], size, plan, "sum")
        (h2, r2), s2 = mt.match_merge_fused(h, res, size, metric, cls, r, plan.new_cls_index, ordered)
        g1 = torch.autograd.grad((h1 * 1.5).sum() + (r1 ** 2).sum(), [h, res])
        g2 = torch.autograd.grad((h2 * 1.5).sum() + (r2 ** 2).sum(), [h, res])
        for a, b in zip((h1, r1, s1) + g1, (h2, r2, s2) + g2):
            if not torch.allclose(a, b, rtol=1e-5, atol=1e-5):
                failures.append(("merge long", ordered))
    print("FAILURES", failures)
    sys.exit(1 if failures else 0)
""")


def test_merge_add_norm_kernel_gives_the_bits_of_merge_then_norm(full):
    """The inference kernel that merges, adds the merged streams and normalises (match_merge_add_norm) returns
    exactly what the merge kernel followed by the norm kernel returns: fp32 and fp16 hidden states, with and
    without sizes, both layouts, a row tile with several rows (C=24, 40) and with one channel block (C=192),
    and a tie-heavy metric routing many sources to one slot, so rows of one tile walk lists of other lengths;
    the same with a fresh workspace (as while a CUDA graph is captured) as with the kept one, and through the
    two-kernel plan (taken past 256 sources) over two plan tiles. Half the cases have the matching write only the
    lists the merge + norm reads (``norm_lists_only``); each case runs again on the flat grid that batches past
    the grid's second dimension take. It refuses a residual that is not float32 and inputs that need a gradient.
    (Default tier: each case in one dtype, alternating; the full tier: both.)"""
    run_interpreted(f"""
        import sys, torch
        from rmeeto.merge import plan_cls_index
        from rmeeto.ops.triton import merge as mt, norm as nt
        torch.manual_seed(0)
        bad = []
        cases = ((2, 33, 24, 16, 6, False), (3, 20, 192, 0, 9, False), (1, 17, 40, 8, 1, False),
                 (2, 65, 24, 32, 30, True))
        dtypes = (torch.float32, torch.float16)
        runs = [(d, c) for d in dtypes for c in cases] if {full!r} else [(dtypes[i % 2], c)
                                                                          for i, c in enumerate(cases)]
        found, grid_y = dict(mt.MATCH_CONFIG), mt.MERGE_NORM_GRID_Y
        for n_run, (dtype, (B, L, C, cls, r, ties)) in enumerate(runs):
            for ordered in (True, False):
                for with_size in (False, True):
                    # the matching writing only the lists the merge + norm reads (kslot, next), every other case
                    mt.MATCH_CONFIG["norm_lists_only"] = (n_run + ordered + with_size) % 2 == 1
                    h = torch.randn(B, L, C).to(dtype)
                    res = torch.randn(B, L, C)
                    size = torch.randint(1, 4, (B, L, 1)).float() if with_size else None
                    w = (torch.rand(C) + 0.5).to(dtype)
                    metric = h
                    if ties:
                        metric = (torch.nn.functional.one_hot(torch.randint(0, 2, (B, L)), C)
                                  * torch.randint(1, 4, (B, L, 1))).to(dtype)
                    new_cls = plan_cls_index(cls, L, r, ordered)
                    (hm, rm), s1 = mt.match_merge_fused(h, res, size, metric, cls, r, new_cls, ordered)
                    ro1, y1, _ = nt._norm_fwd(hm, rm, w, None, 1e-5)
                    ro2, y2, s2 = mt.match_merge_add_norm(h, res, size, metric, cls, r, new_cls, ordered, w, 1e-5)
                    # again in a workspace filled with junk first: every entry the merge + norm reads is written;
                    # and on the flat grid of batches past the grid's second dimension (a limit of 1 here)
                    ws = mt._workspace(B, L, r, h.device)
                    for t in ws:
                        t.fill_(-5)
                    mt.MERGE_NORM_GRID_Y = 1
                    junk = mt._match_merge_add_norm(h, res, size, metric, cls, r, new_cls, ordered, w, 1e-5, ws)
                    mt.MERGE_NORM_GRID_Y = grid_y
                    if not all(torch.equal(a, b) for a, b in zip(junk, (ro2, y2, s2))):
                        bad.append(("junk workspace", dtype, B, L, C, cls, r, ties, ordered, with_size))
                    if ties and int(s1.max()) < 6:
                        bad.append(("ties did not make long lists", int(s1.max())))
                    same = [torch.equal(a, b) for a, b in ((ro1, ro2), (y1, y2), (s1, s2))]
                    if not all(same) or y2.dtype != dtype or ro2.dtype != torch.float32:
                        bad.append((dtype, B, L, C, cls, r, ties, ordered, with_size, same))
        mt.MATCH_CONFIG.update(found)
        # while a CUDA graph is captured no workspace is kept (the graph's pool holds a fresh one): same results
        kept = mt._reused_workspace
        mt._reused_workspace = lambda *args: None
        (hm3, rm3), s3 = mt.match_merge_fused(h, res, size, metric, cls, r, new_cls, ordered)
        ro3, y3, s4 = mt.match_merge_add_norm(h, res, size, metric, cls, r, new_cls, ordered, w, 1e-5)
        mt._reused_workspace = kept
        if not all(torch.equal(a, b) for a, b in ((hm, hm3), (rm, rm3), (s1, s3), (ro2, ro3), (y2, y3), (s2, s4))):
            bad.append("a fresh workspace gave other results")
        # the two-kernel plan (taken past 256 sources; here forced) writes the same lists, over two plan tiles
        h, res, w = torch.randn(2, 150, 16).half(), torch.randn(2, 150, 16), (torch.rand(16) + 0.5).half()
        size = torch.randint(1, 4, (2, 150, 1)).float()
        nc = plan_cls_index(75, 150, 20, True)
        for fused in (True, False):
            mt.MATCH_CONFIG["fused"] = fused
            (hm, rm), s1 = mt.match_merge_fused(h, res, size, h, 75, 20, nc, True)
            ro1, y1, _ = nt._norm_fwd(hm, rm, w, None, 1e-5)
            got = mt.match_merge_add_norm(h, res, size, h, 75, 20, nc, True, w, 1e-5)
            if not all(torch.equal(a, b) for a, b in zip((ro1, y1, s1), got)):
                bad.append(("150 tokens", "fused" if fused else "two kernels"))
        mt.MATCH_CONFIG["fused"] = True
        h, res, w = torch.randn(1, 9, 16), torch.randn(1, 9, 16), torch.ones(16)
        for args, error in (((h, res.half()), ValueError), ((h.clone().requires_grad_(), res), RuntimeError)):
            try:
                mt.match_merge_add_norm(args[0], args[1], None, h, 4, 2, 4, True, w, 1e-5)
                bad.append(("accepted", error))
            except error:
                pass
        print("FAILURES", bad)
        sys.exit(1 if bad else 0)
    """)


def test_embed_kernels_give_the_bits_of_the_pytorch_ops():
    """The token embedding's kernels (rmeeto.ops.triton.embed) against their PyTorch references: the patch
    cut-out for contiguous, channels-last and sliced images, several patch sizes and channel counts (tile rows
    and columns that are not powers of two); the class-token insert + position add at the first, a middle and
    the last row, with float32 class token and position embedding over 16-bit tokens (autocast: both rounded
    to the tokens' dtype before the add) and with every dtype equal; bad shapes refused."""
    run_interpreted("""
        import sys, torch
        from rmeeto.ops import embed
        torch.manual_seed(0)
        bad = []
        for b, c, h, w, p, layout in ((2, 3, 32, 32, 16, "contiguous"), (1, 3, 24, 40, 8, "channels_last"),
                                      (2, 1, 12, 12, 4, "sliced"), (1, 5, 6, 18, 3, "contiguous")):
            for dtype in (torch.float32, torch.float16):
                x = torch.randn(b, c, h, w + (4 if layout == "sliced" else 0)).to(dtype)
                if layout == "sliced":
                    x = x[..., 2:w + 2]
                elif layout == "channels_last":
                    x = x.contiguous(memory_format=torch.channels_last)
                got = embed.patch_rows(x, p, backend="triton")
                ref = embed.patch_rows_torch(x, p)
                if not torch.equal(got, ref) or got.shape != (b, (h // p) * (w // p), c * p * p):
                    bad.append(("patch_rows", b, c, h, w, p, layout, dtype))
        for n, e, index in ((9, 24, 4), (9, 24, 0), (9, 24, 9), (16, 40, 8), (3, 200, 1)):
            for dtype, pdtype in ((torch.float32, torch.float32), (torch.float16, torch.float16),
                                  (torch.float16, torch.float32)):
                t = torch.randn(3, n, e).to(dtype)
                cls = torch.randn(1, 1, e).to(pdtype)
                pos = torch.randn(1, n + 1, e).to(pdtype)
                got = embed.insert_cls_add_pos(t, cls, pos, index, backend="triton")
                ref = embed.insert_cls_add_pos_torch(t, cls, pos, index)
                if not torch.equal(got, ref) or got.dtype != dtype:
                    bad.append(("insert_cls_add_pos", n, e, index, dtype, pdtype))
        t = torch.randn(2, 9, 24)
        for args in ((t, torch.randn(24), torch.randn(9, 24), 4), (t, torch.randn(24), torch.randn(10, 24), 10),
                     (t, torch.randn(23), torch.randn(10, 24), 4)):
            try:
                embed.insert_cls_add_pos(*args, backend="triton")
                bad.append(("accepted", [tuple(a.shape) for a in args[:3]], args[3]))
            except ValueError:
                pass
        try:
            embed.patch_rows(torch.randn(1, 3, 30, 32), 16, backend="triton")
            bad.append(("accepted 30 px rows", 16))
        except ValueError:
            pass
        print("FAILURES", bad)
        sys.exit(1 if bad else 0)
    """)


def test_patch_gemm_embedding_kernel():
    """The fused patch embedding (rmeeto.ops.embed.embed_tokens, kernel rmeeto.ops.triton.embed): the patches read
    straight from contiguous, channels-last and sliced images, patch sizes whose K is and is not a multiple of the
    K step, rows that fill the row tiles and not, widths that are not powers of two, the class token first, in the
    middle and last, with and without a bias, float32 images rounded to the GEMM's fp16 as read: every token within
    one rounding of the GEMM (float32 sums in any order, the bias added, rounded) and one more of the position
    add, the class-token rows those of the PyTorch insert bit for bit. The dispatch: the kernel taken once per
    call, not with a gradient to flow (then the unfused path's bits); inside graph_input(x) the kernel reads the
    image at the device-held offset from x (``used``), so pointing it at another image gives that image's
    tokens bit for bit, and a call on another tensor does not use it; bad shapes refused."""
    run_interpreted("""
        import sys, torch
        import torch.nn.functional as F
        from rmeeto.ops import embed
        from rmeeto.ops.triton import embed as te
        torch.manual_seed(0)
        bad = []
        H = torch.float16

        def check(got, x, w, bias, cls, pos, index, p, tag):
            a = embed.patch_rows_torch(x, p).to(H).double()
            wd = w.reshape(w.shape[0], -1).to(H).double()
            lin = a @ wd.T + (bias.to(H).double() if bias is not None else 0.0)
            bound = a.shape[-1] * 2.0 ** -24 * (a.abs() @ wd.abs().T)
            spacing = lambda v: (v.abs() * 2.0 ** -10).clamp_min(2.0 ** -24)
            n = lin.shape[1]
            rows = [r for r in range(n + 1) if r != index]
            g = got.double()[:, rows]
            pos16 = pos.reshape(n + 1, -1).to(H).double()[rows]
            exact = lin + pos16
            ok = (g - exact).abs() <= 0.5 * spacing(lin) + 0.5 * spacing(g) + bound + 1e-12
            ref = embed.insert_cls_add_pos_torch(lin.to(H), cls, pos, index)
            if not bool(ok.all()) or got.dtype != H or got.shape != ref.shape:
                bad.append(("tokens", tag, (g - exact).abs().max().item()))
            if not torch.equal(got[:, index], ref[:, index]):
                bad.append(("class token", tag))

        cases = ((2, 3, 32, 32, 16, 48, 2, "contiguous", True, H), (3, 3, 24, 40, 8, 24, 0, "channels_last", False, torch.float32),
                 (1, 5, 6, 18, 3, 40, 12, "sliced", True, H), (8, 3, 32, 64, 8, 32, 16, "contiguous", True, H))
        for b, c, h, w, p, e, index, layout, has_bias, xdt in cases:
            x = torch.randn(b, c, h, w + (4 if layout == "sliced" else 0)).to(xdt)
            if layout == "sliced":
                x = x[..., 2:w + 2]
            elif layout == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last)
            n = (h // p) * (w // p)
            wt = (torch.randn(e, c, p, p) / (c * p * p) ** 0.5).to(H)
            bias = torch.randn(e).to(H) if has_bias else None
            cls = torch.randn(1, 1, e)
            pos = torch.randn(1, n + 1, e)
            got = te.embed_tokens(x, wt.reshape(e, -1), bias, cls.reshape(e), pos.reshape(n + 1, e), index, p, H)
            check(got, x, wt, bias, cls, pos, index, p, (b, c, h, w, p, e, index, layout))

        # the dispatch (backend "triton": the kernel on CPU tensors)
        x = torch.randn(2, 3, 32, 32).half()
        wt = (torch.randn(48, 3, 16, 16) / 768 ** 0.5).half()
        bias, cls, pos = torch.randn(48).half(), torch.randn(1, 1, 48).half(), torch.randn(1, 5, 48).half()
        calls, real = [], te.embed_tokens
        def spy(*a, **k):
            calls.append(a[-1] is not None)  # offset given
            return real(*a, **k)
        te.embed_tokens = spy
        with torch.no_grad():
            got = embed.embed_tokens(x, wt, bias, cls, pos, 2, 16, backend="triton")
        check(got, x, wt, bias, cls, pos, 2, 16, "dispatch")
        unfused = embed.insert_cls_add_pos(F.linear(embed.patch_rows(x, 16, "triton"), wt.reshape(48, -1), bias),
                                           cls, pos, 2, "triton")
        wt.requires_grad_(True)
        with torch.enable_grad():
            graded = embed.embed_tokens(x, wt, bias, cls, pos, 2, 16, backend="triton")
        wt.requires_grad_(False)
        if calls != [False] or not torch.equal(graded.detach(), unfused):
            bad.append(("dispatch", calls, torch.equal(graded.detach(), unfused)))
        other = torch.randn(2, 3, 32, 32).half()
        with torch.no_grad():
            expected_other = embed.embed_tokens(other, wt, bias, cls, pos, 2, 16, backend="triton")
            with embed.graph_input(x) as source:
                again = embed.embed_tokens(x, wt, bias, cls, pos, 2, 16, backend="triton")
                used = source.used
                source.point_at(other)
                pointed = embed.embed_tokens(x, wt, bias, cls, pos, 2, 16, backend="triton")
            with embed.graph_input(x.clone()) as elsewhere:
                embed.embed_tokens(x, wt, bias, cls, pos, 2, 16, backend="triton")
        if not (used and torch.equal(again, got) and torch.equal(pointed, expected_other) and not elsewhere.used):
            bad.append(("graph input", used, torch.equal(again, got), torch.equal(pointed, expected_other),
                        elsewhere.used))
        if calls[-4:] != [False, True, True, False]:
            bad.append(("offset passed", calls))
        te.embed_tokens = real
        for args in ((x, wt[:, :2], bias, cls, pos, 2), (x, wt, bias, cls, torch.randn(6, 48).half(), 2),
                     (x, wt, bias, cls, pos, 5), (x[..., :30], wt, bias, cls, pos, 2)):
            try:
                embed.embed_tokens(*args, 16, backend="triton")
                bad.append(("accepted", [tuple(a.shape) for a in args[:5]], args[5]))
            except ValueError:
                pass
        print("FAILURES", bad)
        sys.exit(1 if bad else 0)
    """)


def test_bidir_proj_kernel_and_its_use_in_the_mixer():
    """rmeeto.ops.triton.proj (both directions' x_proj and dt_proj in one kernel) against the four GEMMs: x_dbl
    and delta within one fp16 rounding of float32 GEMMs of the same rounded inputs (delta from the kernel's own
    rounded dt part), over row counts and channel counts that are not multiples of the tiles, dt ranks that are
    not powers of two, float32 and fp16 weights, and weights with a row stride of their own; the six outputs
    are views of the directions' halves. Then in a BiMambaMixer with the op switched on for CPU tensors: the
    output and the exported B metric equal the four-GEMM path's to rounding without a gradient, bit for bit
    (the GEMM path) with one, and a forward hook on x_proj makes the mixer call the module (no fusion)."""
    run_interpreted(MIXER_OP_CHECK + textwrap.dedent("""
        import sys, torch
        from rmeeto.ops import policy, proj
        from rmeeto.ops.triton import proj as tp
        torch.manual_seed(0)
        bad = []
        # the second tiles take fewer rows per program than they hold (ROWS: the rest of the tile masked)
        cfgs = [{"BLOCK_M": 16, "BLOCK_K": 16, "BLOCK_N": 32, "num_warps": 4, "num_stages": 1},
                {"BLOCK_M": 32, "BLOCK_K": 32, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1, "ROWS": 24}]

        for i, (b, L, D, R, N, wdtype, strided) in enumerate(((2, 9, 64, 4, 8, torch.float32, False),
                                                              (3, 17, 96, 12, 16, torch.float16, False),
                                                              (1, 5, 40, 3, 8, torch.float32, True),
                                                              (2, 33, 48, 24, 8, torch.float16, True))):
            uf, ub = torch.randn(b, L, D).half(), torch.randn(b, L, D).half()
            w = [torch.randn(R + 2 * N, D) / D ** 0.5, torch.randn(R + 2 * N, D) / D ** 0.5,
                 torch.randn(D, R) / R ** 0.5, torch.randn(D, R) / R ** 0.5]
            if strided:  # rows of a wider matrix
                w = [torch.cat([t, torch.zeros(t.shape[0], 5)], 1)[:, :t.shape[1]] for t in w]
            w = [t.to(wdtype) for t in w]
            for cfg in (cfgs[i % 2], None):
                xd, de = tp.bidir_scan_inputs(uf, ub, *w, N, cfg)
                # B and C start 16-byte aligned after zeros (tp.xdbl_row); xl: the GEMM's [..., R + 2N]
                bo, width = tp.xdbl_row(R, 2 * N)
                if xd.shape[-1] != width or bo % 8 or width % 8 or not bool((xd[..., R:bo] == 0).all()):
                    bad.append(("x_dbl layout", R, N, tuple(xd.shape)))
                xl = torch.cat(tp.xdbl_parts(xd, R, N), -1)
                for d, u, wx, wdt in ((0, uf, w[0], w[2]), (1, ub, w[1], w[3])):
                    ok = all(within_rounding(xl[d, i], u[i], wx.half()) for i in range(b))
                    if not ok or not all(within_rounding(de[d, i], xd[d, i, :, :R], wdt.half()) for i in range(b)):
                        bad.append(("kernel", b, L, D, R, N, wdtype, strided, d, cfg))
            # the dispatch: the kernel's outputs (default tiles) as views of the two buffers
            (d_f, d_b), (B_f, B_b), (C_f, C_b) = proj.bidir_scan_inputs(uf, ub, *w, N, backend="triton")
            got = (d_f, d_b, B_f, B_b, C_f, C_b)
            _, Bx, Cx = tp.xdbl_parts(xd, R, N)
            ref = (de[0], de[1], Bx[0], Bx[1], Cx[0], Cx[1])
            if not all(torch.equal(x, y) and x.stride() == y.stride() for x, y in zip(got, ref)) \
                    or d_b.data_ptr() != d_f.data_ptr() + 2 * d_f.numel():
                bad.append(("dispatch", b, L, D, R, N, wdtype, strided))
        try:
            proj.bidir_scan_inputs(uf, ub[:, :-1], *w, N, backend="triton")
            bad.append("accepted unequal directions")
        except ValueError:
            pass

        # the tiles by rows and channels: Vim-Ti's width over its batch-128 row counts, Vim-S's large from 128 x 137
        for M, D, want in ((128 * 197, 384, tp.PROJ_CONFIG_NARROW), (128 * 76, 384, tp.PROJ_CONFIG_NARROW),
                           (128 * 76 - 1, 384, tp.PROJ_CONFIG), (128 * 256, 384, tp.PROJ_CONFIG_LARGE),
                           (128 * 197, 768, tp.PROJ_CONFIG_LARGE), (128 * 98, 768, tp.PROJ_CONFIG)):
            if tp.proj_config(M, D) is not want:
                bad.append(("tiles", M, D))
        # on Hopper (SM count given), the large tiles' rows spread over whole waves: Vim-S at 142 tokens takes 96
        # rows a program (2 x 190 programs in one wave of 3 x 132), 197 and 186 tokens fill the wave as they are,
        # a batch of 256 takes two waves; other widths (Vim-B's table included) and row counts as without the SM
        # count
        for M, D, rows in ((128 * 142, 768, 96), (128 * 175, 768, 120), (256 * 142, 768, 96), (128 * 197, 768, None),
                           (128 * 186, 768, None), (128 * 131, 768, "same"), (128 * 197, 384, "same"),
                           (128 * 197, 1536, "same"), (128 * 98, 1536, "same"), (128 * 142, 1536, "same"),
                           (128 * 186, 1536, "same"), (128 * 120, 1536, "same"), (128 * 131, 1536, "same")):
            cfg = tp.proj_config(M, D, 132)
            wave = tp.PROJ_WAVE_PER_SM * 132
            if rows == "same":
                ok = cfg is tp.proj_config(M, D)
            elif rows is None:
                ok = cfg is tp.PROJ_CONFIG_LARGE
            else:
                waves = -(-M // (wave // 2 * 128))  # the fewest waves of 128-row programs
                ok = (cfg.get("ROWS") == rows and cfg["BLOCK_M"] == tp.PROJ_CONFIG_WAVE["BLOCK_M"]
                      and 2 * -(-M // cfg["ROWS"]) <= waves * wave)
            if not ok:
                bad.append(("wave tiles", M, D, cfg))
        try:
            tp.spec(64, 32, 4, 16, 32, 4, dict(cfgs[0], ROWS=17))
            bad.append("accepted more rows per program than the tile holds")
        except ValueError:
            pass
        import rmeeto.models.vim as vim
        bad += mixer_takes_the_op("proj", "x_proj", vim, "fused_scan_inputs", export="B")
        print("FAILURES", bad)
        sys.exit(1 if bad else 0)
    """))


def test_sum_out_proj_kernel_and_its_use_in_the_mixer():
    """rmeeto.ops.triton.outproj (the two scan directions' sum and out_proj in one kernel) against the add and the
    GEMM: within one fp16 rounding of a float32 GEMM of the fp16-rounded sum, over row, input and output channel
    counts that are not multiples of the tiles (masked channel steps too), weights with a row stride of their own
    and planes any distance apart. The dispatch takes the scan's [2, batch, dim, L] channels-last output, refuses
    shapes that do not fit, and falls back to the reference for a bias, float32, another layout, a gradient or
    the switch off. In a BiMambaMixer with the op on for CPU tensors: equal to the add + out_proj path to
    rounding without a gradient, bit for bit (that path) with one, and a forward hook on out_proj makes the mixer
    call the module (no fusion)."""
    run_interpreted(MIXER_OP_CHECK + textwrap.dedent("""
        import sys, torch
        from rmeeto.ops import outproj, policy
        from rmeeto.ops.triton import outproj as to
        torch.manual_seed(0)
        bad = []
        cfgs = [{"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2, "num_warps": 4, "num_stages": 1},
                {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 8, "num_warps": 4, "num_stages": 1}]

        for i, (b, L, K, N, strided, gap) in enumerate(((2, 9, 64, 32, False, 0), (3, 17, 48, 40, True, 0),
                                                        (1, 5, 40, 24, False, 7), (2, 33, 96, 16, True, 16))):
            buf = torch.randn(2 * b * L * K + gap).half()
            y = buf[gap:].view(2, b, L, K) if gap % 2 else torch.stack([buf[:b * L * K].view(b, L, K),
                                                                       buf[b * L * K + gap:][:b * L * K].view(b, L, K)])
            w = (torch.randn(N, K) / K ** 0.5).half()
            if strided:  # rows of a wider matrix
                w = torch.cat([w, torch.zeros(N, 5).half()], 1)[:, :K]
            s = (y[0] + y[1]).reshape(b * L, K)  # the add, rounded to fp16
            for cfg in (cfgs[i % 2], cfgs[1 - i % 2], None):
                got = to.sum_out_proj(y, w, cfg)
                if got.shape != (b, L, N) or not within_rounding(got.reshape(b * L, N), s, w):
                    bad.append(("kernel", b, L, K, N, strided, gap, cfg))
            # the dispatch on the scan's layout: [2, batch, dim, L] views of channels-last planes
            y2 = y.transpose(2, 3)
            if not torch.equal(outproj.sum_out_proj(y2, w, backend="triton"), to.sum_out_proj(y, w)):
                bad.append(("dispatch", b, L, K, N))
            for case, args in (("bias", (y2, w, torch.zeros(N).half())), ("float32", (y2.float(), w.float())),
                               ("layout", (y2.contiguous(), w))):
                if outproj.fused_applies(*args, backend="triton"):
                    bad.append(("applies", case))
            if not torch.equal(outproj.sum_out_proj(y2.contiguous(), w, backend="triton"),
                               outproj.sum_out_proj_torch(y2.contiguous(), w)):
                bad.append(("layout fallback", b, L))
            wg = w.clone().requires_grad_()
            with torch.enable_grad():
                if outproj.fused_applies(y2, wg, None, backend="triton"):
                    bad.append("applies with a gradient")
            if outproj.fused_applies(y2, w, None, backend="torch"):
                bad.append("applies with the torch backend")
        for y2, w in ((torch.randn(2, 1, 8, 3).half(), torch.randn(4, 6).half()),
                      (torch.randn(3, 1, 8, 3).half(), torch.randn(4, 8).half())):
            try:
                outproj.sum_out_proj(y2, w, backend="triton")
                bad.append(("accepted", tuple(y2.shape), tuple(w.shape)))
            except ValueError:
                pass

        # the tiles by rows: smaller ones for few rows of up to OUTPROJ_SMALL_K input channels
        for M, K, want in ((128 * 76, 384, to.OUTPROJ_SMALL_CONFIG), (to.OUTPROJ_SMALL_ROWS + 1, 384, to.OUTPROJ_CONFIG),
                           (128 * 76, 768, to.OUTPROJ_CONFIG), (7, 32, to.OUTPROJ_SMALL_CONFIG)):
            meta = to.spec(M, 192, K, 0, K)[2]
            if any(meta[k] != want[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages")):
                bad.append(("tiles by rows", M, K))
        bad += mixer_takes_the_op("outproj", "out_proj", to, "sum_out_proj")
        print("FAILURES", bad)
        sys.exit(1 if bad else 0)
    """))


def test_sum_out_proj_tma_tiles_for_wide_inputs():
    """Past the plain tiles' MAX_K (lowered here to 32 channels), rmeeto.ops.triton.outproj takes the persistent TMA
    tiles of rmeeto.ops.triton.tma_gemm with the directions' sum in their prologue: within one fp16 rounding of a
    float32 GEMM of the fp16-rounded sum over ragged rows and channels, planes apart by any 16-byte multiple;
    the dispatch takes them up to TMA_MAX_ROWS rows and 16-byte aligned planes, and falls back to the add + GEMM
    (its bits) past those rows, for misaligned planes and past TMA_MAX_K. The mixer takes the op once per call."""
    run_interpreted(MIXER_OP_CHECK + textwrap.dedent("""
        import sys, torch
        from rmeeto.ops import outproj, policy
        from rmeeto.ops.triton import outproj as to, tma_gemm
        torch.manual_seed(0)
        bad = []
        to.MAX_K = 32
        cfg = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2, "num_warps": 4, "num_stages": 1}
        for b, L, K, N, gap in ((2, 9, 48, 32, 0), (3, 17, 40, 24, 8), (1, 5, 64, 16, 24)):
            buf = torch.randn(2 * b * L * K + gap).half()
            y = torch.stack([buf[:b * L * K].view(b, L, K), buf[b * L * K + gap:].view(b, L, K)]) if not gap else \
                torch.as_strided(buf, (2, b, L, K), (b * L * K + gap, L * K, K, 1))
            w = (torch.randn(N, K) / K ** 0.5).half()
            s = (y[0] + y[1]).reshape(b * L, K)
            for c in (cfg, None):
                got = to.sum_out_proj(y, w, c)
                if got.shape != (b, L, N) or not within_rounding(got.reshape(b * L, N), s, w):
                    bad.append(("tma kernel", b, L, K, N, gap, c))
            y2 = y.transpose(2, 3)
            if not to.tma_fits(K, N, b * L) or to.kernel_for(w.dtype, w, None, b * L, y.device) != "tma":
                bad.append(("kernel_for", K))
            if not outproj.fused_applies(y2, w, backend="triton") or not torch.equal(
                    outproj.sum_out_proj(y2, w, backend="triton"), to.sum_out_proj(y, w)):
                bad.append(("dispatch", b, L, K))
            saved, to.TMA_MAX_ROWS = to.TMA_MAX_ROWS, b * L - 1
            try:
                if outproj.fused_applies(y2, w, backend="triton") or not torch.equal(
                        outproj.sum_out_proj(y2, w, backend="triton"), outproj.sum_out_proj_torch(y2, w)):
                    bad.append(("rows past TMA_MAX_ROWS", b, L))
            finally:
                to.TMA_MAX_ROWS = saved
        buf = torch.randn(2 * 2 * 9 * 48 + 3).half()  # planes 3 elements (6 bytes) apart from alignment
        y2 = torch.as_strided(buf, (2, 2, 9, 48), (2 * 9 * 48 + 3, 9 * 48, 48, 1)).transpose(2, 3)
        w = torch.randn(16, 48).half()
        if outproj.fused_applies(y2, w, backend="triton") or not torch.equal(
                outproj.sum_out_proj(y2, w, backend="triton"), outproj.sum_out_proj_torch(y2, w)):
            bad.append("misaligned planes")
        if to.tma_fits(to.TMA_MAX_K + 8, 16, 4) or to.tma_fits(20, 16, 4) or to.tma_fits(48, 12, 4):
            bad.append("tma_fits")
        to.MAX_K = 16  # the mixer's 64 inner channels past it: the TMA tiles in the mixer
        bad += mixer_takes_the_op("outproj", "out_proj", to, "sum_out_proj")
        print("FAILURES", bad)
        sys.exit(1 if bad else 0)
    """))


def test_tma_gemm_keeps_its_descriptors_per_thread_and_no_tensor():
    """rmeeto.ops.triton.tma_gemm.Gemm makes its descriptors on a thread's first call and points them at each later
    call's tensors: a Gemm called again and again with fresh operands (and the directions' sum with two inputs) gives
    each call the bits a Gemm made for that call gives, within one fp16 rounding of a float32 GEMM; it keeps no
    operand alive once a call has returned; and two threads calling one Gemm with their own operands, the first
    held inside its launch while the second calls, each get their own product."""
    run_interpreted(MIXER_OP_CHECK + textwrap.dedent("""
        import gc, sys, threading, weakref, torch
        from rmeeto.ops.triton import tma_gemm
        torch.manual_seed(0)
        bad = []
        cfg = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2, "num_warps": 4, "num_stages": 1}
        dev = torch.device("cpu")
        M, N, K = 37, 24, 40
        w = (torch.randn(N, K) / K ** 0.5).half()
        for two in (False, True):
            g = tma_gemm.Gemm(M, N, K, dev, cfg, two_a=two)
            for call in range(3):
                a = torch.randn(M, K).half()
                a2 = torch.randn(M, K).half() if two else None
                c = torch.empty(M, N).half()
                g(a, a2, w, c)
                fresh = torch.empty(M, N).half()
                tma_gemm.Gemm(M, N, K, dev, cfg, two_a=two)(a, a2, w, fresh)
                s = a + a2 if two else a
                if not torch.equal(c, fresh) or not within_rounding(c, s, w):
                    bad.append(("call", two, call))
                refs = [weakref.ref(t) for t in (a, c) + ((a2,) if two else ())]
                del a, a2, c, s
                gc.collect()
                if any(r() is not None for r in refs):
                    bad.append(("kept an operand", two, call))

        # two threads, one launch at a time: thread 0's call is held inside its launch while thread 1 calls and
        # launches; then thread 0's launch goes on (with its own operands, if the descriptors are its own)
        g = tma_gemm.Gemm(M, N, K, dev, cfg)
        g(torch.randn(M, K).half(), None, w, torch.empty(M, N).half())  # the launcher made on this thread
        held, done = threading.Event(), threading.Event()
        launcher = g.launcher
        class Held:
            def __call__(self, *args):
                if threading.current_thread().name == "first":
                    held.set()
                    done.wait(60)
                return launcher(*args)
        g.launcher = Held()
        inputs = [torch.randn(M, K).half() for _ in range(2)]
        outs = [torch.empty(M, N).half() for _ in range(2)]
        errors = []
        def run(i):
            try:
                if i == 1:
                    held.wait(60)
                g(inputs[i], None, w, outs[i])
            except Exception as exc:
                errors.append(repr(exc)[:200])
            finally:
                if i == 1:
                    done.set()
        threads = [threading.Thread(target=run, args=(i,), name=("first", "second")[i]) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i in range(2):
            want = torch.empty(M, N).half()
            tma_gemm.Gemm(M, N, K, dev, cfg)(inputs[i], None, w, want)
            if not torch.equal(outs[i], want):
                bad.append(("thread", i))
        bad += errors
        print("FAILURES", bad)
        sys.exit(1 if bad else 0)
    """))


def test_tma_gemm_cuts_left_over_tiles_into_row_parts_with_the_same_bits():
    """rmeeto.ops.triton.tma_gemm: the tiles left after the whole rounds of programs (4 under the interpreter), cut
    into 2 or 4 row parts (TAIL_SPLIT), give the bits of the whole tiles, with one input or the directions' sum,
    over ragged rows and channels; rows past M are not written. tail_split takes halves only where they fit one round
    and the channels reach TAIL_SPLIT_MIN_K; spec takes its choice, or the config's, and refuses a split that does not
    divide BLOCK_M."""
    run_interpreted(MIXER_OP_CHECK + textwrap.dedent("""
        import sys, torch
        from rmeeto.ops.triton import tma_gemm as tg
        torch.manual_seed(0)
        bad = []
        dev = torch.device("cpu")
        base = {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2, "num_warps": 4, "num_stages": 1}
        # (M, N, K): 3 x 2 tiles on 4 programs (2 left), 5 x 3 (3 left), 2 x 2 (none left)
        for M, N, K, two in ((70, 24, 40, False), (150, 48, 32, True), (64, 32, 16, False)):
            a = torch.randn(M, K).half()
            a2 = torch.randn(M, K).half() if two else None
            w = (torch.randn(N, K) / K ** 0.5).half()
            want = torch.empty(M + 3, N).half()
            tg.Gemm(M, N, K, dev, dict(base, TAIL_SPLIT=1), two_a=two)(a, a2, w, want[:M])
            if not within_rounding(want[:M], a + a2 if two else a, w):
                bad.append(("whole tiles", M, N, K))
            for split in (2, 4):
                out = torch.full((M + 3, N), 7.0).half()
                g = tg.Gemm(M, N, K, dev, dict(base, TAIL_SPLIT=split), two_a=two)
                if g.meta["SPLIT"] != split:
                    bad.append(("config's split", split))
                g(a, a2, w, out[:M])
                if not torch.equal(out[:M], want[:M]) or not bool((out[M:] == 7.0).all()):
                    bad.append(("split", M, N, K, split))
        rule = [tg.tail_split(t, 132, 128, k) for t, k in ((459, 1536), (492, 1536), (591, 2048), (456, 1535),
                                                           (528, 1536), (459, 1536))]
        if rule != [2, 1, 2, 1, 1, 2] or tg.tail_split(459, 132, 16, 1536) != 1:
            bad.append(("rule", rule))
        if [tg.spec(70, 24, k, dev, base)[2]["SPLIT"] for k in (1536, 40)] != [2, 1]:  # 6 tiles, 4 programs
            bad.append("spec")
        try:
            tg.spec(70, 24, 40, dev, dict(base, TAIL_SPLIT=3))
            bad.append("split 3 of 32 rows taken")
        except ValueError:
            pass
        print("FAILURES", bad)
        sys.exit(1 if bad else 0)
    """))


def test_in_proj_kernel_and_its_use_in_the_mixer():
    """rmeeto.ops.triton.inproj (in_proj as persistent tiles over host-made TMA descriptors) against the GEMM: within
    one fp16 rounding of a float32 GEMM, over row, input and output channel counts that are not multiples of the
    tiles (rows past M and channels past K read as zeros), more tiles than programs, and activations of any leading
    shape. The dispatch refuses a width the kernel does not serve (above WIDE_K: more rows than WIDE_MAX_ROWS) and
    shapes that do not fit, and falls back to
    F.linear (its bits) for a bias, float32, a non-contiguous or misaligned input, a gradient, the torch backend.
    In a BiMambaMixer with the op on for CPU tensors: equal to the F.linear path to rounding without a gradient,
    bit for bit (that path) with one, and a forward hook on in_proj makes the mixer call the module."""
    run_interpreted(MIXER_OP_CHECK + textwrap.dedent("""
        import sys, torch
        import torch.nn.functional as F
        from rmeeto.ops import inproj, policy
        from rmeeto.ops.triton import inproj as ti
        torch.manual_seed(0)
        bad = []
        cfgs = [{"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2, "num_warps": 4, "num_stages": 1},
                {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 32, "GROUP_M": 8, "num_warps": 4, "num_stages": 1}]
        for i, (shape, K, N) in enumerate((((2, 9), 32, 48), ((3, 17), 40, 24), ((5,), 64, 16), ((2, 3, 11), 24, 72),
                                           ((1, 70), 48, 40))):
            x = torch.randn(*shape, K).half()
            w = (torch.randn(N, K) / K ** 0.5).half()
            for cfg in (cfgs[i % 2], cfgs[1 - i % 2], None):
                got = ti.in_proj(x, w, cfg)
                if got.shape != (*shape, N) or not within_rounding(got.reshape(-1, N), x.reshape(-1, K), w):
                    bad.append(("kernel", shape, K, N, cfg))
            if not torch.equal(inproj.in_proj(x, w, backend="triton"), ti.in_proj(x, w)):
                bad.append(("dispatch", shape))
            xs = torch.randn(x.numel() + 8).half()
            for case, args in (("bias", (x, w, torch.zeros(N).half())), ("float32", (x.float(), w.float())),
                               ("layout", (torch.randn(*shape, 2 * K).half()[..., :K], w)),
                               ("misaligned", (xs[1:1 + x.numel()].view_as(x), w))):
                if inproj.fused_applies(*args, backend="triton"):
                    bad.append(("applies", case))
                if not torch.equal(inproj.in_proj(*args, backend="triton"), F.linear(*args)):
                    bad.append(("fallback", case))
            wg = w.clone().requires_grad_()
            with torch.enable_grad():
                if inproj.fused_applies(x, wg, backend="triton"):
                    bad.append("applies with a gradient")
            if inproj.fused_applies(x, w, backend="torch"):
                bad.append("applies with the torch backend")
        wide = torch.randn(8, ti.MAX_K + 8).half()
        if ti.fits(ti.MAX_K + 8, 16, 3) or inproj.fused_applies(torch.randn(3, ti.MAX_K + 8).half(), wide,
                                                                backend="triton"):
            bad.append("a width past MAX_K")
        # above WIDE_K channels, rows up to WIDE_MAX_ROWS only (the general path asks per call)
        K = ti.WIDE_K + 8
        w = (torch.randn(16, K) / K ** 0.5).half()
        few, many = torch.randn(1, 4, K).half(), torch.randn(1, 9, K).half()
        saved, ti.WIDE_MAX_ROWS = ti.WIDE_MAX_ROWS, 6
        try:
            if not inproj.fused_applies(few, w, backend="triton") or inproj.fused_applies(many, w, backend="triton"):
                bad.append("rows above WIDE_K")
            if not within_rounding(inproj.in_proj(few, w, backend="triton").reshape(-1, 16), few.reshape(-1, K), w):
                bad.append("kernel above WIDE_K")
            if not torch.equal(inproj.in_proj(many, w, backend="triton"), F.linear(many, w)):
                bad.append("fallback above WIDE_MAX_ROWS")
        finally:
            ti.WIDE_MAX_ROWS = saved
        if not (ti.fits(192, 768, 128 * 197) and ti.fits(384, 1536, 128 * 76) and not ti.fits(384, 1536, 128 * 197)
                and not ti.fits(768, 3072, 128) and not ti.fits(20, 16, 1)):
            bad.append("fits")
        try:
            inproj.in_proj(torch.randn(2, 8).half(), torch.randn(4, 6).half(), backend="triton")
            bad.append("accepted a mismatch")
        except ValueError:
            pass
        bad += mixer_takes_the_op("inproj", "in_proj", ti, "in_proj")
        print("FAILURES", bad)
        sys.exit(1 if bad else 0)
    """))


def test_mixer_plan_gives_the_general_paths_bits(full):
    """The mixer's prepared inference path (rmeeto.ops.triton.mixer.MixerPlan, its launches through
    rmeeto.ops.triton._launch.Launcher) against the general path with the same kernels on (conv, projection,
    scan, the directions' sum + out_proj, interpreted): the same bits and layout, on a second call of the same
    plan, for another input shape (a plan of its own) and after a weight moved to a new tensor (a new plan). It
    stands aside (general path, same result) with the switch off, with a forward hook on in_proj, for float32
    inputs, and when the B metric is exported; with a gradient enabled (the general path with the add and the
    library GEMM: those bits, and the plan's to rounding). A block takes the plan with its norm, and with a forward
    hook on its mixer calls the mixer as a module (the hook runs; the same bits). Then whole models, unmerged and merged: the same logits with every
    mixer call on a plan, each plain block's residual add + RMSNorm included (full tier: 75 s here; the GPU
    tests run whole Vim-Ti and S)."""
    run_interpreted(f"FULL = {bool(full)}\n" + textwrap.dedent("""
        import sys, torch
        from rmeeto.ops import policy
        from rmeeto.ops.triton import mixer as tm
        import rmeeto.models.vim as vim
        # every kernel on for CPU tensors (the interpreter runs them), each switch still obeyed
        policy.use_fused = lambda op, x, backend="auto": policy._fused[op] if backend == "auto" else backend == "triton"
        import rmeeto.ops.selective_scan as ss
        from rmeeto.ops.triton import scan as tscan
        ss._loaded["triton"] = tscan.selective_scan_triton  # the scan backend "available" without CUDA
        torch.manual_seed(0)
        bad = []
        mixer = vim.BiMambaMixer(32, d_state=8).half()
        with torch.no_grad():
            for p in mixer.parameters():  # away from the init's constants, so a swapped operand would show
                p.add_(torch.randn_like(p) * 0.05)
        plans = []
        real = tm.MixerPlan.__call__
        def spy(self, *a):
            plans.append(self)
            return real(self, *a)
        tm.MixerPlan.__call__ = spy

        def general(h, **kw):
            policy.set_fused("plan", False)
            try:
                return mixer(h, **kw)
            finally:
                policy.set_fused("plan", True)

        def same(a, b):
            return torch.equal(a, b) and a.stride() == b.stride() and a.dtype == b.dtype

        h1, h2 = torch.randn(1, 11, 32).half(), torch.randn(2, 7, 32).half()
        with torch.no_grad():
            # the general path's results first: switching the plan off and on changes the switches' generation,
            # which the plans are keyed on
            ref, ref2 = general(h1)[0], general(h2)[0]
            ref_m, ref_metric = general(h1, export="B")
            # what a gradient's general path runs: the directions' sum and out_proj as the add and the library GEMM
            policy.set_fused("outproj", False)
            ref_lib = general(h1)[0]
            policy.set_fused("outproj", True)
            out = mixer(h1)[0]
            if len(plans) != 1 or not same(out, ref):
                bad.append(("first call", len(plans)))
            again = mixer(h1)[0]
            if len(plans) != 2 or plans[1] is not plans[0] or not same(again, ref):
                bad.append(("second call", len(plans)))
            if not same(mixer(h2)[0], ref2) or len(plans) != 3 or plans[2] is plans[0]:
                bad.append(("another shape", len(plans)))
            n = len(plans)
            mixer.out_proj.weight.data = mixer.out_proj.weight.data.clone()
            if not same(mixer(h1)[0], ref) or len(plans) != n + 1 or plans[-1] is plans[0]:
                bad.append(("moved weight", len(plans) - n))
            n = len(plans)
            metric_out, metric = mixer(h1, export="B")
            if len(plans) != n or not same(metric_out, ref) or not same(metric, ref_metric):
                bad.append(("export", len(plans) - n))
            hooked = []
            handle = mixer.in_proj.register_forward_hook(lambda m, i, o: hooked.append(1))
            if not same(mixer(h1)[0], ref) or len(plans) != n or len(hooked) != 1:
                bad.append(("hook", len(plans) - n, len(hooked)))
            handle.remove()
            policy.set_fused("plan", False)
            if not same(mixer(h1)[0], ref) or len(plans) != n:
                bad.append(("switch off", len(plans) - n))
            policy.set_fused("plan", True)
        with torch.enable_grad():
            got = mixer(h1)[0].detach()
            if not same(got, ref_lib) or not torch.allclose(got, ref, atol=2e-3, rtol=2e-3) or len(plans) != n:
                bad.append(("gradient", len(plans) - n))
        mixer.float()
        with torch.no_grad():
            ref32 = general(h1.float())[0]
            if not same(mixer(h1.float())[0], ref32) or len(plans) != n:
                bad.append(("float32", len(plans) - n))

        # a block takes its mixer's plan with the norm, except with a hook on the mixer, which must see the call
        mixer.half()
        block = vim.Block(32, mixer).half()
        state = vim.TokenState(0)
        with torch.no_grad():
            n = len(plans)
            ref_block = block(h1, None, state)[0]
            hooked = []
            handle = mixer.register_forward_hook(lambda m, i, o: hooked.append(1))
            hooked_out = block(h1, None, state)[0]
            handle.remove()
        if len(plans) != n + 2 or len(hooked) != 1 or not same(hooked_out, ref_block):
            bad.append(("hook on the mixer", len(plans) - n, len(hooked)))

        # whole models, unmerged and merged: blocks take the plan with their norm, merging blocks the prepared
        # merge (match + merge-add-norm kernels, interpreted) and then their mixer's plan
        import rmeeto
        if not FULL:
            print("FAILURES", bad)
            sys.exit(1 if bad else 0)
        from rmeeto.ops.triton import merge as tmerge
        tmerge.is_available = lambda: True  # the fused merge on CPU tensors (interpreted)
        adds, merges = [], []
        real_add, real_merge = tm.MixerPlan.add_norm, tmerge.MergeNormPlan.__call__
        def spy_add(self, *a):
            adds.append(self)
            return real_add(self, *a)
        def spy_merge(self, *a):
            merges.append(self)
            return real_merge(self, *a)
        tm.MixerPlan.add_norm = spy_add
        tmerge.MergeNormPlan.__call__ = spy_merge
        for merged in (False, True):
            model = rmeeto.create_model("vim_test_patch4_16").half().eval()
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p) * 0.05)
            if merged:
                rmeeto.apply_merge(model, rmeeto.MergeConfig(num_merged=3, interval=2))
            x = torch.randn(2, 3, 16, 16).half()
            with torch.no_grad():
                policy.set_fused("plan", False)
                ref = model(x)
                policy.set_fused("plan", True)
                plans.clear(), adds.clear(), merges.clear()
                got = model(x)
                again = model(x)
            depth = len(model.layers)
            n_merging = sum(type(b).__name__ == "MergingBlock" for b in model.layers)
            if not same(got, ref) or not same(again, ref) or len(plans) != 2 * depth \
                    or len(adds) != 2 * (depth - n_merging) or len(merges) != 2 * n_merging \
                    or (merged and not n_merging):
                bad.append(("model", merged, len(plans), len(adds), len(merges), depth, n_merging))
        print("FAILURES", bad)
        sys.exit(1 if bad else 0)
    """))


def test_conv_silu_backward_kernel():
    """The conv+SiLU backward kernel against autograd through the PyTorch reference: dx, dw, db, both
    directions, lengths shorter than the kernel and longer than one tile, 4-tap kernels and shorter ones."""
    run_interpreted("""
        import sys, torch
        from rmeeto.ops import conv
        from rmeeto.ops.triton import conv as tconv
        torch.manual_seed(0)
        bad = []
        for reverse in (False, True):
            for L, K in ((1, 4), (3, 4), (70, 4), (130, 4), (33, 2), (5, 3)):
                x = torch.randn(2, L, 80, requires_grad=True)
                w = torch.randn(80, 1, K, requires_grad=True)
                b = torch.randn(80, requires_grad=True)
                g = torch.randn(2, L, 80)
                ref = torch.autograd.grad(conv.conv_silu_torch(x, w, b, reverse), [x, w, b], g)
                got = tconv._conv_silu_triton_bwd(x.detach(), w.detach(), b.detach(), g, reverse)
                for name, a, r in zip("dx dw db".split(), got, ref):
                    if a.shape != r.shape or not torch.allclose(a, r, rtol=1e-5, atol=1e-5):
                        bad.append((reverse, L, name))
        print("FAILURES", bad)
        sys.exit(1 if bad else 0)
    """)


def test_add_rms_norm_kernels():
    """The fused residual add + RMSNorm, forward and backward, against the PyTorch reference: with and
    without a residual, with and without drop path's per-sample scale, fp32 and fp16 hidden states."""
    run_interpreted("""
        import sys, torch
        from rmeeto.ops import norm
        torch.manual_seed(0)
        bad = []
        for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 2e-3)):
            for has_res in (False, True):
                for has_scale in (False, True):
                    for C in (48, 384):
                        h = torch.randn(3, 7, C).to(dtype).requires_grad_()
                        r = torch.randn(3, 7, C, requires_grad=True) if has_res else None
                        w = (torch.rand(C) + 0.5).requires_grad_()
                        scale = torch.tensor([0.0, 1.25, 1.25]) if has_scale else None
                        g_ro, g_y = torch.randn(3, 7, C), torch.randn(3, 7, C).to(dtype)
                        results = []
                        for backend in ("torch", "triton"):
                            ro, y = norm.add_rms_norm(h, r, w, 1e-5, scale, backend=backend)
                            leaves = [t for t in (h, r, w) if t is not None]
                            results.append([ro, y, *torch.autograd.grad([ro, y], leaves, [g_ro, g_y])])
                        for i, (a, b) in enumerate(zip(results[1], results[0])):
                            a, b = a.float(), b.float()
                            if a.shape != b.shape or (a - b).abs().max() > tol * b.abs().max():
                                bad.append((dtype, has_res, has_scale, C, i))
        print("FAILURES", bad)
        sys.exit(1 if bad else 0)
    """)


def test_triton_scan_kernels():
    """The selective-scan kernels (forward, and the backward with its chunk checkpoints) against the
    reference: outputs and all eight gradients, both directions, lengths around the chunk size, A given
    directly and as A_log (``a_is_log``, formed in the kernel)."""
    run_interpreted("""
        import sys, torch
        from rmeeto.ops.triton import scan as ts
        from rmeeto.ops.selective_scan import selective_scan_ref
        torch.manual_seed(0)
        bad = []
        b, d, n = 2, 40, 16
        for L in (1, 2, 11):
            for reverse in (False, True):
                for a_is_log in (False, True):
                    u, z = torch.randn(b, d, L), torch.randn(b, d, L)
                    delta = torch.randn(b, d, L) * 0.5 - 1
                    A = torch.randn(d, n) * 0.5 if a_is_log else -torch.rand(d, n) * 3 - 0.1
                    B, C = torch.randn(b, n, L), torch.randn(b, n, L)
                    D, bias = torch.randn(d), torch.randn(d) * 0.3
                    leaves = [t.requires_grad_() for t in (u, delta, A, B, C, D, z, bias)]
                    out = ts.selective_scan_triton(*leaves[:5], D=D, z=z, delta_bias=bias, delta_softplus=True,
                                                   reverse=reverse, a_is_log=a_is_log)
                    A_ref = -torch.exp(A) if a_is_log else A
                    ref = selective_scan_ref(u, delta, A_ref, B, C, D, z, bias, True, reverse=reverse)
                    g = torch.randn_like(ref)
                    got = [out, *torch.autograd.grad(out, leaves, g)]
                    want = [ref, *torch.autograd.grad(ref, leaves, g)]
                    for i, (x, y) in enumerate(zip(got, want)):
                        if x.shape != y.shape or (x - y).abs().max() > 1e-5 * max(1.0, y.abs().max().item()):
                            bad.append((L, reverse, a_is_log, i))
        print("FAILURES", bad)
        sys.exit(1 if bad else 0)
    """)


def test_conv_silu_bidir_kernels():
    """The bidirectional conv+SiLU kernels (both directions in one launch each way) against the two
    single-direction kernels: u_f, u_b and dx (= dx_f + dx_b) bit for bit (also with float32 weights and
    16-bit x, rounded in the kernel), the weight / bias gradients up to float32 summation order; and against
    autograd through the PyTorch reference. fp32 and fp16, x a strided view (as in_proj's half), lengths
    below / across a tile, channels not a multiple of the block, 3 and 4 taps."""
    run_interpreted("""
        import sys, torch
        from rmeeto.ops import conv
        from rmeeto.ops.triton import conv as tconv
        torch.manual_seed(0)
        bad = []
        for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 1e-2)):
            for L, K, D in ((3, 4, 80), (37, 3, 130)):
                xz = torch.randn(2, L, 2 * D)
                x = xz[..., :D].to(dtype)  # a strided view, as the mixer's in_proj half
                wf, wb = torch.randn(D, 1, K).to(dtype), torch.randn(D, 1, K).to(dtype)
                bf, bb = torch.randn(D).to(dtype), torch.randn(D).to(dtype)
                gf, gb = torch.randn(2, L, D).to(dtype), torch.randn(2, L, D).to(dtype)
                u2 = tconv._conv_silu_bidir_triton_fwd(x, wf, bf, wb, bb)
                single = (tconv._conv_silu_triton_fwd(x, wf, bf, False), tconv._conv_silu_triton_fwd(x, wb, bb, True))
                if any(u.shape != (2, L, D) or not torch.equal(u, v) for u, v in zip(u2, single)):
                    bad.append(("fwd", dtype, L, K, D))
                # float32 weights with 16-bit x (autocast): rounded to x's dtype in the kernel, as a cast would
                u32 = tconv._conv_silu_bidir_triton_fwd(x, wf.float(), bf.float(), wb.float(), bb.float())
                if any(not torch.equal(u, v) for u, v in zip(u32, single)):
                    bad.append(("fwd, float32 weights", dtype, L, K, D))
                got = tconv._conv_silu_bidir_triton_bwd(x, wf, bf, wb, bb, gf, gb)
                sf = tconv._conv_silu_triton_bwd(x, wf, bf, gf, False)
                sb = tconv._conv_silu_triton_bwd(x, wb, bb, gb, True)
                if not torch.equal(got[0], sf[0] + sb[0]):
                    bad.append(("dx", dtype, L, K, D))
                for name, a, b in zip(("dwf", "dbf", "dwb", "dbb"), got[1:], (sf[1], sf[2], sb[1], sb[2])):
                    if a.shape != b.shape or a.dtype != b.dtype or not torch.allclose(a, b, rtol=1e-5, atol=1e-5):
                        bad.append((name, dtype, L, K, D))
                # the reference, in float32 (fp16 inputs: loose)
                leaves = [t.float().requires_grad_() for t in (x, wf, bf, wb, bb)]
                ref = conv.conv_silu_bidir_torch(*leaves)
                rg = torch.autograd.grad(ref, leaves, (gf.float(), gb.float()))
                for i, (a, r) in enumerate(zip(u2 + got, ref + rg)):
                    a, r = a.float(), r.float()
                    if a.shape != r.shape or (a - r).abs().max() > tol * max(1.0, r.abs().max().item()):
                        bad.append(("ref", dtype, L, K, D, i))
        print("FAILURES", bad)
        sys.exit(1 if bad else 0)
    """)


def test_triton_scan_bidir_kernels():
    """The bidirectional scan kernels (both directions in one launch, the backward direction walking memory
    from the last token) against two single-direction kernel calls: output (times ``scale``) and all fifteen
    gradients bit for bit (fp16 with scale 0.5: bit for bit but for fp16 subnormals, where halving before
    or after rounding differ by at most half a subnormal step); and against the float32 reference. Lengths
    below the chunk and odd, channels not a multiple of either kernel's block, odd dstate, channels-last views
    (B / C packed) and contiguous inputs."""
    run_interpreted("""
        import sys, torch
        from rmeeto.ops.triton import scan as ts
        from rmeeto.ops.selective_scan import selective_scan_bidir_ref
        torch.manual_seed(0)
        ts._POISON = True  # an element the kernels forget to write shows up as NaN
        NAMES = ["u", "delta", "A", "B", "C", "D", "bias"]

        def inputs(b, d, n, L, dtype, channels_last):
            def act():
                return (torch.randn(b, L, d).transpose(1, 2) if channels_last else torch.randn(b, d, L)).to(dtype)
            def bc():  # a slice of x_proj's output, as in the mixer
                return torch.randn(b, L, 2 * n + 3)[..., 3:3 + n].to(dtype).transpose(1, 2)
            return dict(u=act(), delta=(act().float() * 0.5 - 1).to(dtype), A=torch.randn(d, n) * 0.5, B=bc(),
                        C=bc(), D=torch.randn(d), bias=torch.randn(d) * 0.3)

        bad = []
        cases = [(torch.float32, 1.0, (2, 40, 16, 1), True), (torch.float32, 0.5, (1, 70, 5, 7), False),
                 (torch.float16, 0.5, (2, 33, 16, 5), True)]
        for dtype, scale, (b, d, n, L), cl in cases:
            f, r = inputs(b, d, n, L, dtype, cl), inputs(b, d, n, L, dtype, cl)
            z = (torch.randn(b, L, d).transpose(1, 2) if cl else torch.randn(b, d, L)).to(dtype)
            runs = []
            for kind in ("bidir", "single", "reference"):
                lf = {k: v.clone().requires_grad_() for k, v in f.items()}
                lr = {k: v.clone().requires_grad_() for k, v in r.items()}
                zl = z.clone().requires_grad_()
                if kind == "reference":
                    lf, lr = ({k: v.float() for k, v in x.items()} for x in (lf, lr))
                    for x in (lf, lr):
                        x["A"] = -torch.exp(x["A"])
                args = [(lf[k], lr[k]) for k in NAMES[:6]]
                if kind == "bidir":
                    y2 = ts.selective_scan_bidir_triton(*args, z=zl, delta_bias=(lf["bias"], lr["bias"]),
                                                        delta_softplus=True, scale=scale, a_is_log=True)
                elif kind == "single":
                    y2 = torch.stack([ts.selective_scan_triton(*[a[i] for a in args], z=zl, delta_bias=x["bias"],
                                                               delta_softplus=True, reverse=bool(i), a_is_log=True)
                                      for i, x in enumerate((lf, lr))])
                    y2 = (y2.float() * scale).to(dtype)  # what halving in float32 before rounding gives
                else:
                    y2 = selective_scan_bidir_ref(*args, z=zl.float(), delta_bias=(lf["bias"], lr["bias"]),
                                                  delta_softplus=True, scale=scale)
                if kind == "bidir":
                    g = torch.randn(y2.shape).to(dtype)
                leaves = [x[k] for x in (f, r) for k in NAMES]
                grads = torch.autograd.grad(y2, [x[k] for x in (lf, lr) for k in NAMES if k != "A"] + [zl]
                                            if kind == "reference" else
                                            [x[k] for x in (lf, lr) for k in NAMES] + [zl], g)
                runs.append([y2] + list(grads))
            bidir, single, ref = runs
            for i, (a, s) in enumerate(zip(bidir, single)):
                if a.shape != s.shape or a.dtype != s.dtype or not torch.isfinite(a).all():
                    bad.append(("layout", dtype, L, i))
                elif not torch.equal(a, s) and not (i == 0 and dtype == torch.float16 and
                                                    (a.float() - s.float()).abs().max() <= 2.0 ** -25):
                    bad.append(("single", dtype, L, i, (a.float() - s.float()).abs().max().item()))
            # vs the float32 reference (A's gradient is w.r.t. A there, A_log here: skipped)
            tol = 1e-5 if dtype == torch.float32 else 1e-2
            got = [bidir[0]] + [x for j, x in enumerate(bidir[1:]) if j % 7 != 2]
            for i, (a, w) in enumerate(zip(got, ref)):
                a, w = a.float(), w.float()
                if a.shape != w.shape or (a - w).abs().max() > tol * max(1.0, w.abs().max().item()):
                    bad.append(("reference", dtype, L, i, (a - w).abs().max().item()))
        # the custom ops' fake (meta) functions and autograd registration, as torch.compile relies on them
        f, r = inputs(1, 8, 4, 3, torch.float16, True), inputs(1, 8, 4, 3, torch.float16, True)
        z = torch.randn(1, 3, 8).to(torch.float16).transpose(1, 2)
        ins = [x[k].clone().requires_grad_() for k in NAMES for x in (f, r)]  # (u_f, u_b, delta_f, ...)
        full = ins[:12] + [z.clone().requires_grad_()] + ins[12:]
        res = torch.library.opcheck(ts._selective_scan_bidir_op, (*full, True, 0.5, True))
        bad += [("opcheck", k, v) for k, v in res.items() if v != "SUCCESS"]
        g2 = torch.randn(2, f["u"].shape[0], f["u"].shape[2], f["u"].shape[1]).to(f["u"].dtype).transpose(2, 3)
        res = torch.library.opcheck(ts._selective_scan_bidir_bwd_op, (g2, *[t.detach() for t in full], True, 0.5, True))
        bad += [("opcheck bwd", k, v) for k, v in res.items() if v != "SUCCESS"]
        print("FAILURES", bad)
        sys.exit(1 if bad else 0)
    """)


@pytest.mark.full  # 90 s of the default tier on 2 cores: CI runs it; the kernel tests cover the default mode
def test_scan_bc_read_modes_give_the_same_bits():
    """Every way the scan kernels read B and C (_bc_mode: 16-bit vector rows, 16-bit pairs, float32 vector rows,
    one element at a time) gives the same bits: outputs and every gradient, single and bidirectional kernels, both
    directions, a length with a partial last chunk (the forward's clamped tail reads), one token alone and six
    whole chunks. Vim's layout: B and C neighbouring columns of one x_proj output, with dt_rank 24
    (16-byte aligned rows in fp16: vector rows) and 12 (not: pairs) in fp16, and dt_rank 24 in fp32 (vector
    rows; the float32 copy of mode 3 is off by default, RMEETO_SCAN_BC32)."""
    lengths = (1, 5, 12)  # CHUNK is 2: 5 ends in a partial chunk
    combos = ((torch.float16, 24, 2), (torch.float16, 12, 1), (torch.float32, 24, 3))
    run_interpreted("""
        import sys, torch
        from rmeeto.ops.triton import scan as ts
        torch.manual_seed(0)
        ts._POISON = True
        bad = []
        b, d, n = 2, 40, 16
        for dtype, r, fast_mode in COMBOS:
            for L in LENGTHS:
                x_dbl = torch.randn(b, L, r + 2 * n).to(dtype)
                Bm, Cm = (t.transpose(1, 2) for t in x_dbl[..., r:].split(n, dim=-1))
                x2 = torch.randn(b, L, r + 2 * n).to(dtype)
                Bb, Cb = (t.transpose(1, 2) for t in x2[..., r:].split(n, dim=-1))
                u, z = (torch.randn(b, L, d).to(dtype).transpose(1, 2) for _ in range(2))
                u2 = torch.randn(b, L, d).to(dtype).transpose(1, 2)
                delta = (torch.randn(b, L, d) * 0.5 - 1).to(dtype).transpose(1, 2)
                A = torch.randn(d, n) * 0.5
                D, bias = torch.randn(d), torch.randn(d) * 0.3
                g = torch.randn(b, L, d).to(dtype).transpose(1, 2)
                g2 = torch.randn(2, b, L, d).to(dtype).transpose(2, 3)
                results = {}
                for pack in (True, False):
                    ts._PACK_BC = pack
                    mode = ts._bc_mode(Bm, Cm)
                    if mode != (fast_mode if pack else 0):
                        bad.append(("mode", str(dtype), r, pack, mode))
                    outs = []
                    for reverse in (False, True):
                        leaves = [t.clone().requires_grad_() for t in (u, delta, A, Bm, Cm, D, z, bias)]
                        y = ts.selective_scan_triton(*leaves[:5], D=leaves[5], z=leaves[6], delta_bias=leaves[7],
                                                     delta_softplus=True, reverse=reverse, a_is_log=True)
                        outs += [y, *torch.autograd.grad(y, leaves, g)]
                    pairs = [(u, u2), (delta, delta), (A, -A), (Bm, Bb), (Cm, Cb), (D, D * 0.5)]
                    leaves = [t.clone().requires_grad_() for p in pairs for t in p] + [z.clone().requires_grad_()]
                    args = [(leaves[2 * i], leaves[2 * i + 1]) for i in range(6)]
                    y2 = ts.selective_scan_bidir_triton(*args, z=leaves[12], delta_bias=(bias, bias),
                                                        delta_softplus=True, scale=0.5, a_is_log=True)
                    outs += [y2, *torch.autograd.grad(y2, leaves, g2)]
                    results[pack] = outs
                for i, (x, y) in enumerate(zip(results[True], results[False])):
                    if x.dtype != y.dtype or not torch.equal(x, y):
                        bad.append(("bits", str(dtype), r, L, i))
        print("FAILURES", bad)
        sys.exit(1 if bad else 0)
    """.replace("LENGTHS", repr(lengths)).replace("COMBOS", repr(combos)))


def test_training_path_hands_the_scan_aligned_bc_rows():
    """With a gradient to flow (re-training), a mixer whose dt_rank leaves B and C 8-byte aligned in x_proj's
    16-bit rows (Vim-Ti: 12; here 2) hands the Triton scan B and C in rows of their own (read mode 2, vector
    rows; split_x_dbl's copy), and read mode 1 (32-bit pairs) with ALIGN_BC_TRAIN off. Output, metric and every
    parameter's and the input's gradient keep their bits. A forward hook on x_proj still sees its call; another
    scan backend and a dt_rank that aligns the rows already get views of x_proj's output, as before; torch.compile
    traces the mixer without a graph break (the decision reads strides, not the address)."""
    run_interpreted("""
        import sys, torch
        from rmeeto.models.vim import BiMambaMixer
        from rmeeto.ops import proj as op
        from rmeeto.ops.triton import scan as ts
        torch.manual_seed(0)
        bad, modes = [], []
        mode_of = ts._bc_mode
        def spy(*bcs):
            modes.append(mode_of(*bcs))
            return modes[-1]
        ts._bc_mode = spy
        ts.is_available = lambda: True  # the backend registry's CUDA check: the interpreter runs the kernels
        mixer = BiMambaMixer(32, d_state=16, scan_backend="triton").half()  # dt_rank 2: B at column 2 of 34
        h = torch.randn(2, 7, 32).half()
        g = torch.randn(2, 7, 32).half()
        runs = {}
        for align in (True, False):
            op.ALIGN_BC_TRAIN = align
            modes.clear()
            mixer.zero_grad()
            hl = h.clone().requires_grad_()
            out, metric = mixer(hl, export="B")
            torch.autograd.backward([out, metric], [g, torch.ones_like(metric)])
            if not modes or set(modes) != {2 if align else 1}:
                bad.append(("modes", align, sorted(set(modes))))
            runs[align] = [out, metric, hl.grad] + [p.grad.clone() for p in mixer.parameters()]
        for i, (a, b) in enumerate(zip(runs[True], runs[False])):
            if not torch.equal(a, b):
                bad.append(("bits", i))
        op.ALIGN_BC_TRAIN = True
        hooked = []
        handle = mixer.x_proj.register_forward_hook(lambda m, i, o: hooked.append(1))
        modes.clear()
        mixer(h.clone().requires_grad_())
        handle.remove()
        if set(modes) != {2} or len(hooked) != 1:
            bad.append(("hooked x_proj", sorted(set(modes)), len(hooked)))
        copies = []
        split = op.split_x_dbl
        def split_spy(x_dbl, *a):
            parts = split(x_dbl, *a)
            copies.append(parts[1].data_ptr() != x_dbl[..., a[0]:].data_ptr())
            return parts
        op.split_x_dbl = split_spy
        import rmeeto.models.vim as vim
        vim.split_x_dbl = split_spy
        BiMambaMixer(32, d_state=16, scan_backend="chunked").half()(h.clone().requires_grad_())
        BiMambaMixer(32, d_state=16, dt_rank=8, scan_backend="triton").half()(h.clone().requires_grad_())
        if len(copies) != 4 or any(copies):
            bad.append(("copies where the rows needed none", copies))
        op.split_x_dbl = vim.split_x_dbl = split
        explanation = torch._dynamo.explain(mixer)(h.clone().requires_grad_())  # torch.compile traces the copy
        if explanation.graph_break_count:
            bad.append(("graph breaks", [str(r.reason)[:200] for r in explanation.break_reasons]))
        print("FAILURES", bad)
        sys.exit(1 if bad else 0)
    """)


def test_scan_forward_prefetch_gives_the_same_bits(full):
    """The forward's prefetch (each chunk step loads the next chunk's u / delta / z before its math) moves loads,
    not arithmetic: the single-direction launcher (both directions) and the two-direction one (scale 1 and 0.5)
    give the same bits with it on and off. The launchers prefetch only where B / C are read as 16-bit vector
    rows (scan._prefetches), so the fp16 cases slice B / C at 16-byte offsets as Vim-S's x_proj output does, and
    the test counts the calls that prefetched. Cases: fp32 / fp16 (bf16: see the module docstring), with and without
    z, D, delta_bias, softplus and A_log; lengths 1, below, at and across chunks; channels not a multiple of the
    block; even (B / C packed) and odd dstate; channels-last views and contiguous tensors. Buffers are
    NaN-poisoned, so an element one version leaves unwritten fails. The default tier runs two of the cases."""
    run_interpreted(f"""
        import sys, torch
        from rmeeto.ops.triton import scan as ts
        ts._POISON = True
        FULL = {bool(full)!r}

        def inputs(b, d, n, L, dtype, cl, a_is_log, g):
            def act(s=1.0, o=0.0):
                x = torch.randn(b, L, d, generator=g).transpose(1, 2) if cl else torch.randn(b, d, L, generator=g)
                return (x * s + o).to(dtype)
            def bc():  # a slice of x_proj's output, as in the mixer (contiguous: a plain tensor)
                if cl:
                    return torch.randn(b, L, 2 * n + 8, generator=g)[..., 8:8 + n].to(dtype).transpose(1, 2)
                return torch.randn(b, n, L, generator=g).to(dtype)
            A = torch.randn(d, n, generator=g) * 0.5 if a_is_log else -torch.rand(d, n, generator=g) * 3 - 0.1
            return dict(u=act(), delta=act(0.5, -1.0), A=A, B=bc(), C=bc(), D=torch.randn(d, generator=g),
                        bias=torch.randn(d, generator=g) * 0.3)

        g = torch.Generator().manual_seed(0)
        bad, count, prefetched = [], 0, 0
        # (dtype, (batch, dim, dstate, L), channels-last, has z, has D, has bias, softplus, A_log)
        cases = [
            (torch.float32, (2, 40, 16, 9), True, True, True, True, True, True),
            (torch.float16, (2, 24, 16, 5), True, True, True, True, True, True),
            (torch.float32, (2, 33, 16, 1), True, True, False, True, False, False),
            (torch.float32, (1, 70, 5, 5), False, False, False, False, False, False),
            (torch.float32, (1, 40, 6, 2), False, False, True, False, True, True),
            (torch.float16, (1, 40, 5, 3), False, True, False, True, False, True),
            (torch.float16, (1, 33, 16, 4), True, False, True, False, True, False),
        ]
        for case in (cases if FULL else cases[:2]):
            dtype, (b, d, n, L), cl, has_z, has_D, has_bias, softplus, a_is_log = case
            f = inputs(b, d, n, L, dtype, cl, a_is_log, g)
            r = inputs(b, d, n, L, dtype, cl, a_is_log, g)
            z = inputs(b, d, n, L, dtype, cl, a_is_log, g)["u"] if has_z else None
            for x in (f, r):
                x["D"] = x["D"] if has_D else None
                x["bias"] = x["bias"] if has_bias else None
                if not softplus:  # positive steps, or the state can overflow 16 bits (inf in both: not a check)
                    x["delta"] = x["delta"].abs() * 0.5
            calls = [("fwd", rev, ts._fwd, (x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], z, x["bias"],
                                            softplus, rev, a_is_log)) for rev, x in ((False, f), (True, r))]
            for scale in (1.0, 0.5):
                args = tuple(x[k] for k in ("u", "delta", "A", "B", "C", "D") for x in (f, r))
                calls.append(("bidir fwd", scale, ts._fwd_bidir, args + (z, f["bias"], r["bias"], softplus, scale,
                                                                        a_is_log)))
            prefetched += len(calls) * ts._prefetches(dict(prefetch=True), ts._bc_mode(f["B"], f["C"]))
            for name, arg, fn, args in calls:
                outs = []
                for prefetch in (False, True):
                    ts.FWD_CONFIG = dict(BLOCK_D=64, CHUNK=2, num_warps=2, prefetch=prefetch)
                    outs.append(fn(*args))
                count += 1
                a, o = outs[1], outs[0]
                if (a.shape != o.shape or a.stride() != o.stride() or not torch.isfinite(o).all()
                        or not torch.equal(a, o)):
                    bad.append((str(dtype), (b, d, n, L), case[2:], name, arg))
        print("compared", count, "launcher calls,", prefetched, "of them prefetching")
        print("FAILURES", bad)
        sys.exit(1 if bad or count < (28 if FULL else 8) or prefetched < (8 if FULL else 4) else 0)
    """)


def test_scan_softplus_and_sigmoid_helpers():
    """The scan's own softplus (log1p through atanh, one exp2 and one division) and sigmoid (through exp2) against
    float64: within 4e-6 relative over [-30, 30] (the exp2 argument's float32 rounding alone reaches ~2e-6 at
    |x| = 30; a wrong series coefficient gives > 1e-4), exact at the ends (x itself for large x, the exp for very
    negative x), and NaN in, NaN out."""
    run_interpreted("""
        import sys, torch, triton
        import triton.language as tl
        from rmeeto.ops.triton import scan as ts

        @triton.jit
        def k(x_ptr, sp_ptr, sg_ptr, n, BLOCK: tl.constexpr):
            i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            x = tl.load(x_ptr + i, mask=i < n)
            tl.store(sp_ptr + i, ts._softplus(x), mask=i < n)
            tl.store(sg_ptr + i, ts._sigmoid(x), mask=i < n)

        x = torch.cat([torch.linspace(-30, 30, 60001), torch.linspace(-1, 1, 20001),
                       torch.tensor([40.0, 100.0, 1e30, -60.0, -80.0, float("nan")])])
        sp, sg = torch.empty_like(x), torch.empty_like(x)
        k[(triton.cdiv(x.numel(), 1024),)](x, sp, sg, x.numel(), BLOCK=1024)
        xd = x.double()
        bad = []
        m = xd.abs() <= 30
        for name, got, want in (("softplus", sp, torch.nn.functional.softplus(xd)), ("sigmoid", sg, torch.sigmoid(xd))):
            rel = ((got.double() - want).abs() / want.abs())[m]
            if not rel.max() < 4e-6:
                bad.append((name, rel.max().item(), x[m][rel.argmax()].item()))
        tail = sp[-6:-1]
        if not (tail[0] == 40.0 and tail[1] == 100.0 and tail[2] == 1e30):
            bad.append(("softplus of large x", tail[:3].tolist()))
        for v, xv in zip(tail[3:].double(), (-60.0, -80.0)):
            want = torch.exp(torch.tensor(xv, dtype=torch.float64))
            if not abs(v - want) <= 1e-5 * want:
                bad.append(("softplus of very negative x", xv, v.item()))
        if not (torch.isnan(sp[-1]) and torch.isnan(sg[-1])):
            bad.append(("NaN", sp[-1].item(), sg[-1].item()))
        print("FAILURES", bad)
        sys.exit(1 if bad else 0)
    """)

"""ViT/DeiT backbone (rmeeto.models.vit) and ToMe-style merging for timm ViTs (rmeeto.merge_vit)."""

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block, VisionTransformer

import rmeeto
from rmeeto import MergeConfig, apply_merge, remove_merge, trace_tokens
from rmeeto.merge_vit import MergingViTBlock, forward_tokens, vit_flops, vit_schedule
from rmeeto.models import get_config, list_models
from rmeeto.models.vim import TokenState
from rmeeto.models.vit import VIT_MODELS, ViTConfig

TINY = "vit_test_patch4_16"


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return rmeeto.create_model(TINY, **kw).eval()


def images(n=3, size=16, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------- registry
@pytest.mark.parametrize("name", list_models(backbone="vit"))
def test_vit_rows_build_timm_vision_transformers(name):
    cfg = get_config(name)
    model = rmeeto.create_model(name, device="meta")
    assert type(model) is VisionTransformer and isinstance(cfg, ViTConfig)
    assert model.num_tokens == cfg.arch.num_tokens == model.patch_embed.num_patches + 1
    assert model.cls_position == 0 and model.global_pool == "token" and model.num_prefix_tokens == 1
    assert len(model.blocks) == cfg.arch.depth and model.embed_dim == cfg.arch.embed_dim
    assert cfg.input_size == (3, cfg.arch.img_size, cfg.arch.img_size)
    assert model.head.out_features == cfg.arch.num_classes


def test_deit_rows_are_timms_deit_with_the_published_sizes():
    # parameter counts of timm's DeiT (shared/SPEC.md section 10), 152 state-dict tensors each
    expected = {"deit_tiny_patch16_224": 5_717_416, "deit_small_patch16_224": 22_050_664,
                "deit_base_patch16_224": 86_567_656}
    for name, count in expected.items():
        ours = rmeeto.create_model(name, device="meta")
        theirs = timm.create_model(name, pretrained=False, device="meta")
        assert sum(p.numel() for p in ours.parameters()) == count
        assert [(k, v.shape) for k, v in ours.state_dict().items()] == [
            (k, v.shape) for k, v in theirs.state_dict().items()
        ]
        assert len(ours.state_dict()) == 152 and ours.norm.eps == 1e-6  # timm's eps, not the release's 1e-5
    assert set(VIT_MODELS) <= set(list_models(backbone=None))
    assert set(list_models()) == set(list_models(backbone=None))  # the default lists both backbones
    assert not set(VIT_MODELS) & set(list_models(backbone="vim"))


def test_vit_digits_is_sized_like_the_vim_digits_model():
    vit = sum(p.numel() for p in rmeeto.create_model("vit_digits_patch4_32", device="meta").parameters())
    vim = sum(p.numel() for p in rmeeto.create_model("vim_digits_patch4_32", device="meta").parameters())
    assert abs(vit - vim) / vim < 0.05


def test_deit_pretrained_offline_and_not_cached_is_one_line(tmp_path, monkeypatch):
    # offline with an empty cache: timm's pretrained download path fails, and the error is one line naming the
    # official file to give instead
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="deit_small_patch16_224-cd65a155.pth") as info:
        rmeeto.create_model("deit_small_patch16_224", pretrained=True)
    assert "\n" not in str(info.value)


def test_deit_checkpoint_from_timm_loads_strictly(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    path = tmp_path / "deit_tiny_patch16_224-a1311bcf.pth"
    torch.save({"model": source.state_dict()}, path)  # the layout of the official DeiT files
    model = rmeeto.create_model("deit_tiny_patch16_224", checkpoint_path=str(path)).eval()
    x = images(2, 224)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))
    # merging renames nothing: the same file loads strictly into the merged model too
    apply_merge(model, MergeConfig.paper("deit_tiny_patch16_224"))
    assert list(model.state_dict()) == list(source.state_dict())
    rmeeto.load_checkpoint(model, path)
    model.load_state_dict(source.state_dict(), strict=True)


# ------------------------------------------------------------------------------------------- exactness
def test_zero_merge_on_deit_equals_timms_forward_exactly():
    torch.manual_seed(0)
    model = rmeeto.create_model("deit_tiny_patch16_224").eval()
    x = images(2, 224)
    with torch.no_grad():
        ref = model(x)
        apply_merge(model, MergeConfig(num_merged=0, interval=1))
        assert all(isinstance(b, MergingViTBlock) for b in model.blocks)
        assert torch.equal(model(x), ref)


def test_apply_then_remove_restores_timms_exact_function():
    model = tiny()
    x = images()
    keys = list(model.state_dict())
    with torch.no_grad():
        ref = model(x)
        apply_merge(model, MergeConfig.paper(TINY, shuffle_rate=0.5, shuffle_in_eval=True))
        assert not torch.allclose(model(x), ref, atol=1e-4)
        remove_merge(model)
        assert type(model) is VisionTransformer and all(type(b) is Block for b in model.blocks)
        assert list(model.state_dict()) == keys and model.merge_config is None
        assert torch.equal(model(x), ref)


def _reference_merge(x, size, r):
    """Direct, loop-based ordered merge of one sequence x [L, c] with sizes [L]: class token at 0; sources are the
    even class-free positions, destinations the odd ones; the r sources with the best cosine partner merge
    into it by size-weighted average. Returns (x [L - r, c], size [L - r])."""
    cls, rest, s = x[0], x[1:], size[1:]
    T = rest.shape[0]
    src_pos, dst_pos = list(range(0, T, 2)), list(range(1, T, 2))
    unit = rest / rest.norm(dim=-1, keepdim=True)
    best = []
    for p in src_pos:
        sims = [float(unit[p] @ unit[q]) for q in dst_pos]
        k = max(range(len(sims)), key=lambda i: (sims[i], -i))
        best.append((sims[k], p, dst_pos[k]))
    ranked = sorted(best, key=lambda t: (-t[0], t[1]))[:r]
    into = {p: q for _, p, q in ranked}
    out_x, out_s = [cls], [size[0]]
    for p in range(T):
        if p in into:
            continue
        members = [p] + [a for a, q in into.items() if q == p]
        w = torch.stack([s[m] for m in members])
        out_x.append((torch.stack([rest[m] for m in members]) * w[:, None]).sum(0) / w.sum())
        out_s.append(w.sum())
    return torch.stack(out_x), torch.stack(out_s)


def _reference_attention(attn, x, size):
    """timm Attention written out, with log(size) added to every query's logits (proportional attention)."""
    B, N, C = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    logits = (q * attn.scale) @ k.transpose(-2, -1) + size.log()[:, None, None, :]
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(B, N, C)
    return attn.proj(out)


def test_merge_equals_direct_size_weighted_recomputation():
    """Every block of a merged tiny ViT (r = 2, so sizes differ from 1 after block 0) against a loop-based
    re-computation: proportional attention, matching, size-weighted average, ordered layout, MLP."""
    model = apply_merge(tiny(), MergeConfig(num_merged=2, interval=1))
    x = images()
    with torch.no_grad():
        h = model._pos_embed(model.patch_embed(x))
        size = torch.ones(h.shape[0], h.shape[1])
        for block in model.blocks:
            h = h + _reference_attention(block.attn, block.norm1(h), size)
            merged = [_reference_merge(h[b], size[b], 2) for b in range(h.shape[0])]
            h, size = torch.stack([m[0] for m in merged]), torch.stack([m[1] for m in merged])
            h = h + block.mlp(block.norm2(h))
        expected = model.head(model.norm(h)[:, 0])
        tokens, state = forward_tokens(model, x)
        assert tokens.shape[1] == 17 - 4 * 2
        torch.testing.assert_close(state.size[..., 0], size)
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
        assert state.size.sum(1).eq(17).all()  # every original token counted once (class token size 1)


def test_proportional_attention_changes_nothing_when_all_sizes_are_one():
    model = apply_merge(tiny(), MergeConfig(num_merged=0, interval=1))
    block = model.blocks[0]
    x = torch.randn(2, 17, 32)
    with torch.no_grad():
        plain, _ = block(x, TokenState(0))
        ones, _ = block(x, TokenState(0, torch.ones(2, 17, 1)))
        torch.testing.assert_close(ones, plain, atol=1e-6, rtol=1e-6)
        # and non-unit sizes do act, exactly as log(size) added to the logits
        size = torch.randint(1, 5, (2, 17, 1)).float()
        weighted, _ = block(x, TokenState(0, size))
        assert not torch.allclose(weighted, plain, atol=1e-4)
        h = x + _reference_attention(block.attn, block.norm1(x), size[..., 0])
        torch.testing.assert_close(weighted, h + block.mlp(block.norm2(h)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("ordered", [True, False])
def test_class_token_is_never_merged_and_stays_first(ordered):
    model = apply_merge(tiny(), MergeConfig(num_merged=3, interval=1, ordered=ordered))
    x = images()
    with torch.no_grad():
        tokens, state = forward_tokens(model, x, track_source=True)
        ref = tiny()
        plain = ref.norm(ref.blocks(ref._pos_embed(ref.patch_embed(x))))
    source = state.source  # [batch, tokens, 17]
    assert tokens.shape[1] == 17 - 4 * 3 and state.cls_index == 0
    assert torch.equal(source[:, 0], F.one_hot(torch.zeros(3, dtype=torch.long), 17).float())
    assert source[:, 1:, 0].eq(0).all()  # no patch token holds the class token
    assert source.sum(1).eq(1).all() and state.size[:, 0].eq(1).all()  # each original token in one place
    assert not torch.allclose(tokens[:, 0], plain[:, 0], atol=1e-4)  # merging did change what cls attends to


def _slot_positions(source):
    """Class-free original position each token slot stands at after ONE merge: its destination (the group's
    only odd class-free position) or, for a kept source, its own position. source: [batch, tokens, 17]."""
    patches = source[:, 1:, 1:]  # class token row and column out
    odd = (torch.arange(16) % 2 == 1).float()
    has_dst = (patches * odd).amax(-1) > 0
    return torch.where(has_dst, (patches * odd).argmax(-1), patches.argmax(-1))


def test_ordered_and_unordered_layouts_differ_but_a_vit_does_not_care():
    """Ordered keeps original positions; unordered is [cls, kept sources by score, destinations]. Attention is
    order-free, so both give the same logits (the paper's point: order matters for Mamba, not for a ViT)."""
    x = images()
    outs = {}
    for ordered in (True, False):
        model = apply_merge(tiny(), MergeConfig(num_merged=5, interval=4, ordered=ordered))  # block 0 only
        with torch.no_grad():
            tokens, state = forward_tokens(model, x, track_source=True)
            outs[ordered] = (model(x), tokens, state.source)
    ordered_pos, unordered_pos = _slot_positions(outs[True][2]), _slot_positions(outs[False][2])
    assert (ordered_pos.diff(dim=1) > 0).all()
    kept = (outs[False][2][:, 1:, 1:].sum(-1) == 1) & (unordered_pos % 2 == 0)  # kept sources, by score
    assert torch.equal(kept[:, :3], torch.ones(3, 3, dtype=torch.bool))  # 8 sources - 5 merged = 3 first
    assert (unordered_pos[:, 3:] % 2 == 1).all() and (unordered_pos[:, 3:].diff(dim=1) > 0).all()
    assert torch.equal(ordered_pos.sort(dim=1).values, unordered_pos.sort(dim=1).values)
    # same tokens in another order: sort both by slot position and compare; logits agree up to rounding
    def by_position(tokens, pos):
        return tokens[:, 1:].gather(1, pos.argsort(dim=1)[..., None].expand(-1, -1, tokens.shape[-1]))

    torch.testing.assert_close(by_position(outs[False][1], unordered_pos), by_position(outs[True][1], ordered_pos),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs[False][0], outs[True][0], atol=1e-5, rtol=1e-5)


def test_paper_presets_and_token_counts():
    expect = {"deit_tiny_patch16_224": (5, 137), "deit_small_patch16_224": (11, 65),
              "deit_base_patch16_224": (11, 65)}
    for name, (r, final) in expect.items():
        cfg = MergeConfig.paper(name)
        assert cfg.num_merged == r and cfg.interval == 1 and cfg.ordered and cfg.final_tokens is None
        sched = vit_schedule(cfg, 197, 12)
        assert all(s.merging for s in sched) and sched[-1].tokens_out == final
    assert MergeConfig.paper("deit_small_patch16_224", ordered=False).ordered is False
    # the release's registry default for DeiT-B (r = 17) is capped near the end and ends at 8 tokens
    with pytest.warns(UserWarning, match="clamped"):
        model = apply_merge(rmeeto.create_model("deit_base_patch16_224", depth=12).eval(),
                            MergeConfig.paper("deit_base_patch16_224", num_merged=17))
    assert vit_schedule(model.merge_config, 197, 12)[-1].tokens_out == 8


def test_trace_matches_the_static_schedule_and_interval_rule():
    config = MergeConfig(num_merged=(3, 2), interval=2)  # blocks 0 and 2 merge
    model = apply_merge(tiny(), config)
    trace = trace_tokens(model, images())
    assert [t["tokens"] for t in trace] == [17, 14, 14, 12, 12]
    assert [s.tokens_in for s in vit_schedule(config, 17, 4)] == [17, 14, 14, 12]
    assert all(t["cls_index"] == 0 for t in trace)
    odd = vit_schedule(MergeConfig(num_merged=1, interval=2, odd=True), 17, 4)
    assert [s.layer for s in odd if s.merging] == [1, 3]


def test_vim_only_fields_are_refused_for_a_vit():
    model = tiny()
    for bad, match in ((dict(metric="B"), "metric"), (dict(final_tokens=9), "final_tokens")):
        with pytest.raises(ValueError, match=match):
            apply_merge(model, MergeConfig(num_merged=2, **bad))
    with pytest.raises(ValueError, match="entries"):
        apply_merge(model, MergeConfig(num_merged=(1, 2, 3), interval=1))
    assert type(model) is VisionTransformer  # a refused config leaves the model untouched


def test_vits_that_do_not_read_the_class_token_are_refused():
    avg = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, global_pool="avg")
    with pytest.raises(ValueError, match="global_pool"):
        apply_merge(avg, MergeConfig(num_merged=1, interval=1))
    regs = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, reg_tokens=2)
    with pytest.raises(ValueError, match="prefix"):
        apply_merge(regs, MergeConfig(num_merged=1, interval=1))


def test_prune_drops_tokens_without_averaging():
    model = apply_merge(tiny(), MergeConfig(num_merged=3, interval=1, mode="prune"))
    with torch.no_grad():
        _, state = forward_tokens(model, images(), track_source=True)
    assert state.size.eq(1).all() and state.source.sum(-1).eq(1).all()  # one patch each, the rest dropped
    assert state.source.shape[1] == 17 - 4 * 3


def test_merged_vit_trains():
    model = apply_merge(tiny().train(), MergeConfig.paper(TINY, shuffle_rate=0.3))
    loss = F.cross_entropy(model(images()), torch.tensor([1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    assert math.isfinite(loss.item())


def test_flops_match_the_published_deit_figures_and_drop_with_merging():
    # DeiT paper: 1.3 / 4.6 / 17.6 GFLOPs (multiply-adds) for Ti / S / B at 224px
    for name, published in (("deit_tiny_patch16_224", 1.3), ("deit_small_patch16_224", 4.6),
                            ("deit_base_patch16_224", 17.6)):
        arch = get_config(name).arch
        plain = vit_flops(arch)
        assert abs(plain["gflops"] - published) < 0.05 * published
        merged = vit_flops(arch, MergeConfig.paper(name))
        assert merged["gflops"] < plain["gflops"]
        assert merged["tokens_per_layer"] == [s.tokens_out for s in vit_schedule(MergeConfig.paper(name), 197, 12)]
    # r = 0 costs exactly the unmerged count (no matching is done)
    arch = get_config(TINY).arch
    assert vit_flops(arch, MergeConfig(num_merged=0, interval=1))["total"] == vit_flops(arch)["total"]


def test_checkpoint_for_another_image_size_resamples_pos_embed(tmp_path):
    """A ViT checkpoint made at 16px loads into the same ViT at 24px: pos_embed is resampled on the patch grid
    (4x4 -> 6x6) with the class token's row kept as is; at the same size it loads exactly."""
    from rmeeto.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    create_model = rmeeto.create_model
    src = create_model("vit_test_patch4_16")
    path = save_checkpoint(src, tmp_path / "vit.pth")
    same = create_model("vit_test_patch4_16")
    assert load_checkpoint(same, path).pos_embed_resized is None
    torch.testing.assert_close(same.pos_embed, src.pos_embed, rtol=0, atol=0)
    with pytest.warns(UserWarning, match="pos_embed resampled from 4x4 to 6x6"):
        result = load_checkpoint(big := create_model("vit_test_patch4_16", img_size=24), path)
    assert result.pos_embed_resized == (17, 37) and big.pos_embed.shape == (1, 37, 32)
    torch.testing.assert_close(big.pos_embed[:, 0], src.pos_embed[:, 0], rtol=0, atol=0)  # class token row untouched
    torch.testing.assert_close(big.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight, rtol=0, atol=0)
    assert not torch.allclose(big.pos_embed[:, 1:7], big.pos_embed[:, 0:1].expand(-1, 6, -1))
    with pytest.warns(UserWarning, match="classifier for 10 classes left out"):
        three = create_model("vit_test_patch4_16", num_classes=3)
        assert load_checkpoint(three, path).head_reset

"""VideoMamba: image and Kinetics-400 video models (SPEC sections 6 and 10).

Exact parameter counts and state-dict layouts of the official constructors, the video forward against a direct
per-token recomputation, strict loading of official-layout checkpoints (and resizing to other clip lengths and
image sizes), merging over the flattened space-time tokens, token schedules and FLOPs. Real-size models are only
built on the meta device (shapes, no memory); forwards use tiny configurations.
"""

from __future__ import annotations

import math

import pytest
import torch

from rmeeto.checkpoint import CheckpointError, load_checkpoint
from rmeeto.flops import paper_flops, true_flops
from rmeeto.merge import MergeConfig, apply_merge, trace_tokens
from rmeeto.models import VideoMamba, VimArch, VisionMamba, create_model, get_config
from rmeeto.models.videomamba import checkpoint_filter_fn, resample_temporal_embed, tubelet_linear
from rmeeto.models.vim import arch_facts, arch_from_state_dict

from _official import naive_mixer, official_layout, randomize

VIDEO = {  # name: (embed_dim, depth, parameters, state-dict tensors), SPEC section 10
    "videomamba_tiny_patch16_224_f8": (192, 24, 7_033_744, 416),
    "videomamba_small_patch16_224_f8": (384, 24, 25_568_656, 416),
    "videomamba_middle_patch16_224_f8": (576, 32, 73_875_856, 552),
}
IMAGE = {
    "videomamba_tiny_patch16_224": (192, 24, 7_148_008, 415),
    "videomamba_small_patch16_224": (384, 24, 25_796_584, 415),
    "videomamba_middle_patch16_224": (576, 32, 74_217_448, 551),
    "videomamba_base_patch16_224": (768, 24, 97_598_440, 415),
}
TINY = "videomamba_test_patch4_16_f4"


# ============================================================================================ counts and layout
@pytest.mark.parametrize("name", list(VIDEO))
def test_video_parameter_counts_and_layout(name):
    e, depth, params, tensors = VIDEO[name]
    expected = official_layout(e, depth, 400, num_frames=8)
    assert len(expected) == tensors and sum(math.prod(s) for _, s in expected) == params
    model = create_model(name, device="meta")
    assert isinstance(model, VideoMamba)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == expected
    assert sum(p.numel() for p in model.parameters()) == params
    assert model.num_tokens == 1 + 8 * 196 == 1569 and model.cls_position == 0
    assert get_config(name).input_size == (3, 8, 224, 224)


@pytest.mark.parametrize("name", list(IMAGE))
def test_image_parameter_counts_and_layout(name):
    e, depth, params, tensors = IMAGE[name]
    expected = official_layout(e, depth, 1000)
    assert len(expected) == tensors and sum(math.prod(s) for _, s in expected) == params
    model = create_model(name, device="meta")
    assert type(model) is VisionMamba  # a registry row, not a model of its own
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == expected
    assert sum(p.numel() for p in model.parameters()) == params
    assert model.arch.cls_position == "first" and not model.arch.divide_out and model.num_tokens == 197
    assert all(not layer.mixer.divide_out for layer in model.layers)


def test_arch_read_back_from_video_and_image_state_dicts():
    for name in list(VIDEO) + [TINY]:
        arch = get_config(name).arch
        state = create_model(name, device="meta").state_dict()
        assert arch_from_state_dict(state) == arch  # a video state dict can only be VideoMamba
        assert arch_facts(state)["num_tokens"] == arch.num_tokens
        other = create_model(name, num_frames=16, kernel_size=2, device="meta").state_dict()
        assert arch_from_state_dict(other) == arch.replace(num_frames=16, tubelet_size=2)
    # image VideoMamba weights are Vim's: the family settings are explicit arguments
    arch = get_config("videomamba_small_patch16_224").arch
    state = create_model("videomamba_small_patch16_224", device="meta").state_dict()
    assert arch_from_state_dict(state) == get_config("vim_small_patch16_224").arch
    assert arch_from_state_dict(state, cls_position="first", divide_out=False, init="videomamba") == arch


def test_create_model_official_argument_names():
    model = create_model("videomamba_small_patch16_224_f8", num_frames=16, device="meta")
    assert model.num_tokens == 1 + 16 * 196 and model.temporal_pos_embedding.shape == (1, 16, 384)
    model = create_model("videomamba_small_patch16_224_f8", num_frames=16, kernel_size=2, img_size=160,
                         channels=1, num_classes=7, device="meta")
    assert model.patch_embed.proj.weight.shape == (384, 1, 2, 16, 16)
    assert model.num_tokens == 1 + 8 * 100 and model.pos_embed.shape == (1, 101, 384)
    assert model.arch.input_size == (1, 16, 160, 160) and model.head.out_features == 7
    assert VimArch.from_kwargs(model.arch.constructor_kwargs()) == model.arch
    # official flags at their only implemented values are accepted, others refused by name
    create_model(TINY, bimamba=True, use_checkpoint=False, checkpoint_num=0, fc_drop_rate=0.5, device="meta")
    with pytest.raises(ValueError, match="bimamba"):
        create_model(TINY, bimamba=False, device="meta")
    with pytest.raises(ValueError, match="tubelet_size"):
        create_model(TINY, kernel_size=3, device="meta")  # 4 frames are not a multiple of 3
    with pytest.raises(ValueError, match="class token first"):
        create_model(TINY, cls_position="middle", device="meta")
    with pytest.raises(TypeError, match="num_frames"):
        create_model("videomamba_tiny_patch16_224", num_frames=8, device="meta")  # an image model


def test_arch_validation_of_video_fields():
    with pytest.raises(ValueError, match="needs a video model"):
        VimArch(tubelet_size=2)
    with pytest.raises(ValueError, match="num_frames must be an int >= 1"):
        VimArch(num_frames=0, cls_position="first")
    with pytest.raises(ValueError, match="init must be one of"):
        VimArch(init="xavier")
    video = VimArch(num_frames=8, tubelet_size=2, cls_position="first")
    assert (video.temporal_size, video.num_spatial_patches, video.num_patches, video.num_tokens) == (4, 196, 784, 785)
    assert VimArch().temporal_size == 1 and not VimArch().is_video


def test_timm_create_model_builds_the_video_model():
    import timm

    model = timm.create_model(TINY, num_classes=3)
    assert isinstance(model, VideoMamba) and model.head.out_features == 3


def test_videomamba_init_scheme():
    torch.manual_seed(0)
    video = create_model(TINY)
    assert torch.count_nonzero(video.cls_token) == 0 and torch.count_nonzero(video.temporal_pos_embedding) == 0
    for layer in video.layers:  # every Linear bias zero, the dt biases included
        assert torch.count_nonzero(layer.mixer.dt_proj.bias) == 0
        assert layer.mixer.in_proj.weight.std() < 0.03  # trunc-normal 0.02, not kaiming-uniform
    vim = create_model(TINY, init="vim")
    assert torch.count_nonzero(vim.cls_token) > 0 and torch.count_nonzero(vim.layers[0].mixer.dt_proj.bias) > 0


# ============================================================================================ forward
def hand_tokens(model, clip):
    """Official token assembly for one clip [C, T, H, W], in float64: per frame the patches (row-major) plus
    the spatial pos_embed rows 1.., plus that frame's temporal embedding; class token + pos_embed row 0 first."""
    E, p = model.embed_dim, model.patch_embed.patch_size
    w = model.patch_embed.proj.weight.double()  # [E, C, 1, p, p]
    seq = [model.cls_token[0, 0].double() + model.pos_embed[0, 0].double()]
    for t in range(clip.shape[1]):
        patches = clip[:, t].double().unfold(1, p, p).unfold(2, p, p)  # [C, gh, gw, p, p]
        patches = patches.permute(1, 2, 0, 3, 4).reshape(-1, w[0].numel())
        tok = patches @ w.reshape(E, -1).T + model.patch_embed.proj.bias.double()
        tok = tok + model.pos_embed[0, 1:].double() + model.temporal_pos_embedding[0, t].double()
        seq.extend(tok)
    return torch.stack(seq)


def naive_videomamba(model, clip):
    """(normalised tokens [1 + T * patches, E], logits) of one clip, every step written out in float64."""

    def rms(x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * weight.double()

    residual, hidden = None, hand_tokens(model, clip)
    for layer in model.layers:
        residual = hidden if residual is None else residual + hidden
        hidden = naive_mixer(layer.mixer, rms(residual, layer.norm.weight), divide_out=False)
    out = rms(residual + hidden, model.norm_f.weight)
    return out, out[0] @ model.head.weight.double().T + model.head.bias.double()


def test_video_model_equals_naive_forward():
    torch.manual_seed(0)
    model = create_model(TINY, depth=2, embed_dim=8, img_size=8, num_frames=3).eval()
    randomize(model, 3)
    with torch.no_grad():  # large enough that the mixers and the temporal embedding visibly move every token
        model.temporal_pos_embedding.mul_(5)
        for layer in model.layers:
            layer.mixer.out_proj.weight.mul_(30)
    clips = torch.randn(2, 3, 3, 8, 8)
    with torch.no_grad():
        embedded = model.embed(clips)
        tokens, state = model.forward_tokens(clips)
        logits = model(clips)
    assert embedded.shape == tokens.shape == (2, 1 + 3 * 4, 8) and state.cls_index == 0
    for i in range(2):
        torch.testing.assert_close(embedded[i].double(), hand_tokens(model, clips[i]), rtol=1e-5, atol=1e-6)
        ref_tokens, ref_logits = naive_videomamba(model, clips[i])
        torch.testing.assert_close(tokens[i].double(), ref_tokens, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(logits[i].double(), ref_logits, rtol=1e-4, atol=1e-5)


def test_frame_order_matters_and_one_frame_is_the_image_model():
    torch.manual_seed(0)
    model = create_model(TINY).eval()
    with torch.no_grad():
        model.temporal_pos_embedding.normal_()
    clip = torch.randn(1, 3, 4, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(model(clip), model(clip.flip(2)), atol=1e-4)
    # one frame, zero temporal embedding: the image VideoMamba (class token first, no /2) with the same weights
    video = create_model(TINY, num_frames=1).eval()
    image = create_model("vim_test_patch4_16", cls_position="first", if_divide_out=False).eval()
    state = {k: v for k, v in video.state_dict().items() if k != "temporal_pos_embedding"}
    state["patch_embed.proj.weight"] = state["patch_embed.proj.weight"][:, :, 0]
    image.load_state_dict(state)
    with torch.no_grad():
        video.temporal_pos_embedding.zero_()
        torch.testing.assert_close(video(clip[:, :, :1]), image(clip[:, :, 0]), rtol=1e-5, atol=1e-6)


def test_tubelet_patch_embedding():
    torch.manual_seed(0)
    model = create_model(TINY, kernel_size=2).eval()
    clip = torch.randn(2, 3, 4, 16, 16)
    conv = model.patch_embed.proj
    direct = conv(clip).flatten(3).permute(0, 2, 3, 1)  # [batch, 2, 16, E]
    assert direct.shape == (2, 2, 16, 32) and model.num_tokens == 1 + 2 * 16
    torch.testing.assert_close(model.patch_embed(clip), direct)
    # the GEMM form the CUDA path uses, checked here on CPU
    torch.testing.assert_close(tubelet_linear(clip, conv.weight, conv.bias), direct, rtol=1e-5, atol=1e-5)


def test_wrong_input_shape_is_one_clear_error():
    model = create_model(TINY)
    with pytest.raises(ValueError, match=r"expects clips \[batch, 3, 4, 16, 16\]"):
        model(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="frames"):
        model(torch.randn(1, 3, 5, 16, 16))


# ============================================================================================ checkpoints
def test_official_layout_checkpoint_round_trips_strict(tmp_path):
    torch.manual_seed(0)
    src = create_model(TINY).eval()
    randomize(src, 5)
    clip = torch.randn(2, 3, 4, 16, 16)
    with torch.no_grad():
        want = src(clip)
    torch.save(src.state_dict(), tmp_path / "bare.pth")
    torch.save({"model": src.state_dict(), "epoch": 3}, tmp_path / "wrapped.pth")
    for file, source in (("bare.pth", "(root)"), ("wrapped.pth", "model")):
        dst = create_model(TINY).eval()
        result = load_checkpoint(dst, tmp_path / file)
        assert result.source == source and result.num_tensors == len(src.state_dict())
        with torch.no_grad():
            assert torch.equal(dst(clip), want)
    # the official loader would silently load nothing from a nested dict: here it is an error
    torch.save({"checkpoint": {"model": src.state_dict()}}, tmp_path / "nested.pth")
    with pytest.raises(CheckpointError, match="no weights found"):
        load_checkpoint(create_model(TINY), tmp_path / "nested.pth")
    # an image checkpoint is not a video one: missing temporal embedding, 2-D kernel
    torch.save(create_model("vim_test_patch4_16", cls_position="first").state_dict(), tmp_path / "image.pth")
    with pytest.raises(CheckpointError, match="temporal_pos_embedding"):
        load_checkpoint(create_model(TINY), tmp_path / "image.pth")


def test_checkpoint_resized_to_other_frames_and_image_size(tmp_path):
    torch.manual_seed(0)
    src = create_model(TINY)
    with torch.no_grad():
        src.temporal_pos_embedding.copy_(torch.arange(4.0).view(1, 4, 1).expand(1, 4, 32))
    torch.save({"model": src.state_dict()}, tmp_path / "f4.pth")
    with pytest.warns(UserWarning, match="temporal_pos_embedding interpolated from 4 to 8"):
        model = create_model(TINY, num_frames=8, img_size=24, checkpoint_path=str(tmp_path / "f4.pth"))
    temporal = model.temporal_pos_embedding[0, :, 0]
    # linear, align_corners=False: 8 samples of the ramp 0..3 at (i + 0.5) / 2 - 0.5, clamped at the ends
    expected = ((torch.arange(8.0) + 0.5) / 2 - 0.5).clamp(0, 3)
    torch.testing.assert_close(temporal, expected)
    assert model.pos_embed.shape == (1, 1 + 36, 32)
    assert torch.equal(model.pos_embed[0, 0], src.pos_embed[0, 0])  # class row kept first, untouched
    torch.testing.assert_close(resample_temporal_embed(src.temporal_pos_embedding, 4), src.temporal_pos_embedding)
    state = checkpoint_filter_fn({"model": src.state_dict()}, create_model(TINY, num_frames=2))
    assert state["temporal_pos_embedding"].shape == (1, 2, 32)


# ============================================================================================ merging
def test_paper_presets_have_no_final_token_rule():
    for name in list(VIDEO) + list(IMAGE):
        assert MergeConfig.paper(name).final_tokens is None
    assert MergeConfig.paper("vim_tiny_patch16_224").final_tokens == 76  # the Vim rows keep compare


@pytest.mark.parametrize("name, final, cls_seen", [
    ("videomamba_tiny_patch16_224_f8", 601, {0}),
    ("videomamba_small_patch16_224_f8", 601, {0}),
    ("videomamba_middle_patch16_224_f8", 249, {0}),
    ("videomamba_tiny_patch16_224", 142, {0}),
    ("videomamba_small_patch16_224", 76, {0}),
    ("videomamba_base_patch16_224", 76, {0}),
])
def test_token_schedules(name, final, cls_seen):
    arch = get_config(name).arch
    for ordered in (True, False):
        config = MergeConfig.paper(name, ordered=ordered)
        sched = config.schedule(arch.num_tokens, arch.depth, arch.cls_index)
        assert sched[-1].tokens_out == final
        assert {s.cls_in for s in sched} | {s.cls_out for s in sched} == cls_seen
    if arch.is_video:  # SPEC: 1569 entering layers 0-2, then -88 every two layers
        entering = [s.tokens_in for s in sched]
        assert entering[:3] == [1569] * 3 and entering[3:5] == [1481] * 2
        if arch.depth == 24:
            assert entering[23] == 601 and entering[21:23] == [689, 689]
        else:
            assert [s.tokens_out for s in sched if s.merging][-5:] == [601, 513, 425, 337, 249]


@pytest.mark.parametrize("kw", [
    {}, {"metric": "B"}, {"metric": "C"}, {"metric": "delta"}, {"distance": "l1"}, {"distance": "l2"},
    {"mode": "prune"}, {"ordered": False}, {"choose": 3}, {"reduce": "amax"}, {"odd": True},
])
def test_every_merge_variant_runs_on_videomamba(kw):
    torch.manual_seed(0)
    model = create_model(TINY, depth=6, num_frames=2, embed_dim=16).eval()
    clip = torch.randn(2, 3, 2, 16, 16)
    with torch.no_grad():
        unmerged = model(clip)
    config = MergeConfig(num_merged=5, **kw)
    apply_merge(model, config)
    records = trace_tokens(model, clip)
    sched = config.schedule(33, 6, 0)
    assert [r["tokens"] for r in records[:-1]] == [s.tokens_in for s in sched]
    assert records[-1]["tokens"] == sched[-1].tokens_out < 33
    assert all(r["cls_index"] == 0 for r in records)
    with torch.no_grad():
        merged = model(clip)
    assert merged.shape == (2, 10) and torch.isfinite(merged).all() and not torch.allclose(merged, unmerged)


def test_class_token_stays_first_through_merges():
    # a class token carrying a huge marker value is still where the head reads it after every merge
    torch.manual_seed(0)
    model = create_model(TINY, depth=6).eval()
    with torch.no_grad():
        model.cls_token.fill_(1e3)
    for ordered in (True, False):
        apply_merge(model, MergeConfig(num_merged=12, ordered=ordered))
        tokens, state = model.forward_tokens(torch.randn(1, 3, 4, 16, 16), track_source=True)
        assert state.cls_index == 0 and tokens.shape[1] == 65 - 24
        assert state.source[0, 0, 0] == 1 and state.source[0, 0, 1:].sum() == 0  # token 0 is the class token alone


def test_merging_zero_tokens_equals_the_unmerged_model():
    torch.manual_seed(0)
    model = create_model(TINY, depth=6).eval()
    clip = torch.randn(2, 3, 4, 16, 16)
    with torch.no_grad():
        want = model(clip)
        apply_merge(model, MergeConfig(num_merged=0))
        assert torch.equal(model(clip), want)


# ============================================================================================ FLOPs
@pytest.mark.parametrize("name, unmerged, merged", [
    ("videomamba_tiny_patch16_224_f8", 11.54, 9.49),
    ("videomamba_small_patch16_224_f8", 40.43, 30.99),
    ("videomamba_middle_patch16_224_f8", 115.33, 71.71),
    ("videomamba_tiny_patch16_224", 1.45, 1.28),
    ("videomamba_small_patch16_224", 5.08, 3.58),
    ("videomamba_base_patch16_224", 18.87, 13.21),
])
def test_paper_flops(name, unmerged, merged):
    assert round(paper_flops(name), 2) == unmerged
    assert round(paper_flops(name, MergeConfig.paper(name)), 2) == merged


def test_image_videomamba_flops_equal_vim():
    for size in ("tiny", "small", "base"):
        vim, video = f"vim_{size}_patch16_224", f"videomamba_{size}_patch16_224"
        assert paper_flops(video) == paper_flops(vim)
        assert paper_flops(video, MergeConfig.paper(vim, final_tokens=None)) == paper_flops(vim, MergeConfig.paper(vim))


def test_true_flops_of_the_video_model():
    name = "videomamba_small_patch16_224_f8"
    base = true_flops(name)
    merged = true_flops(name, MergeConfig.paper(name))
    assert base["tokens_per_layer"] == [1569] * 24 and merged["tokens_per_layer"][-1] == 601
    # both scan directions are counted, so the true count exceeds the one-direction paper formula
    assert base["total"] > paper_flops(name) and merged["total"] < base["total"]
    a = get_config(name).arch
    assert base["breakdown"]["embed"] * 1e9 == 1568 * 384 * 768 + 1569 * 384 + 1568 * 384
    # a tubelet of 2 halves the tokens but not the patch-embedding work
    halved = true_flops(create_model(name, kernel_size=2, device="meta"))
    assert halved["tokens_per_layer"][0] == 785
    assert halved["breakdown"]["embed"] * 1e9 == 784 * 384 * 2 * 768 + 785 * 384 + 784 * 384
    assert a.num_tokens == 1569


# ============================================================================================ visualisation
def test_clip_token_groups_span_frames_and_draw(tmp_path):
    from rmeeto.visualize import DROPPED, draw_clip_token_groups, token_groups

    torch.manual_seed(0)
    model = create_model(TINY, num_frames=2)
    apply_merge(model, MergeConfig(num_merged=12))  # layer 2: 33 -> 21 tokens
    clip = torch.rand(1, 3, 2, 16, 16)
    clip[:, :, 1] = clip[:, :, 0]  # two identical frames: a patch's best partner is often itself one frame later
    groups, info = token_groups(model, clip)
    assert groups.shape == (1, 2, 4, 4) and info["tokens"] == 21 and info["cls_index"] == 0
    torch.testing.assert_close(info["logits"], model(clip))
    g = groups[0]
    assert int((g == DROPPED).sum()) == 0 and len(g.unique()) == 20  # every patch token, no class token
    spanning = [t for t in g.unique() if len(set((g == t).nonzero()[:, 0].tolist())) > 1]
    assert spanning  # merging runs over space-time: some tokens hold patches of both frames
    frames = clip[0].permute(1, 2, 3, 0).numpy()  # [T, H, W, 3]
    fig = draw_clip_token_groups(frames, g.numpy(), title="clip 0")
    fig.savefig(tmp_path / "clip.png")
    assert (tmp_path / "clip.png").stat().st_size > 1000
    assert len(fig.axes) == 4 and "across frames" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="one clip"):
        draw_clip_token_groups(frames, groups.numpy())


def test_inspect_checkpoint_recognises_video_and_image_files(tmp_path):
    from rmeeto.models import inspect_checkpoint, match_model

    torch.save({"model": create_model(TINY, num_frames=8).state_dict()}, tmp_path / "f8.pth")
    info = inspect_checkpoint(tmp_path / "f8.pth")
    assert info["model"] == TINY and info["model_overrides"] == {"num_frames": 8}
    assert info["arch"]["num_tokens"] == 1 + 8 * 16
    # image VideoMamba and Vim files have the same shapes: the earlier registered (Vim) is named
    facts = arch_facts(create_model("videomamba_small_patch16_224", device="meta").state_dict())
    assert match_model(facts) == ("vim_small_patch16_224", {})
    # a tubelet of 4 is no registered structure (the image-size-16 models have tubelets of 1 and, the demo's, 2)
    assert match_model(arch_facts(create_model(TINY, kernel_size=4, device="meta").state_dict()))[0] is None

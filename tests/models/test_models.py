"""Registry models: official parameter counts and the exact official state-dict layout (SPEC section 2)."""

from __future__ import annotations

import pytest
import torch

import rmeeto
from rmeeto.models import create_model, get_config, list_models

from _official import official_layout

OFFICIAL = {  # name: (embed_dim, parameters)
    "vim_tiny_patch16_224": (192, 7_148_008),
    "vim_small_patch16_224": (384, 25_796_584),
    "vim_base_patch16_224": (768, 97_598_440),
}


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_official_parameter_count(name):
    model = create_model(name, device="meta")
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL[name][1]


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_official_state_dict_keys_order_and_shapes(name):
    state = create_model(name, device="meta").state_dict()
    expected = official_layout(OFFICIAL[name][0])
    assert len(expected) == 415
    assert list(state) == [key for key, _ in expected]
    assert [tuple(t.shape) for t in state.values()] == [shape for _, shape in expected]
    assert not list(create_model(name, device="meta").buffers())  # no buffers in the official files


# the video models have their own layout (temporal_pos_embedding, a 3-D patch kernel): tests/test_videomamba.py
IMAGE_MODELS = [n for n in list_models(backbone="vim") if not get_config(n).arch.is_video]


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_registry_models_follow_the_same_layout(name):
    cfg = get_config(name)
    model = create_model(name, device="meta")
    arch = {"img_size": 224, "patch_size": 16, "num_classes": 1000, "depth": 24, **cfg.arch.to_dict()}
    tokens = (arch["img_size"] // arch["patch_size"]) ** 2 + 1
    assert model.num_tokens == tokens and cfg.input_size == (3, arch["img_size"], arch["img_size"])
    expected = official_layout(arch["embed_dim"], arch["depth"], arch["num_classes"], patch=arch["patch_size"],
                               spatial_tokens=tokens)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == expected


def test_create_model_passes_overrides_through():
    model = create_model("vim_test_patch4_16", img_size=24, num_classes=3, device="meta")
    assert model.pos_embed.is_meta and model.num_tokens == 37 and model.head.out_features == 3


def test_timm_create_model_after_importing_rmeeto():
    import timm

    assert rmeeto.__version__
    model = timm.create_model("vim_test_patch4_16", num_classes=4).eval()
    assert isinstance(model, rmeeto.VisionMamba)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 16, 16)).shape == (1, 4)

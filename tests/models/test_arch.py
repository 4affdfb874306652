"""VimArch: validation, derived token facts, class-token placement, reading it back from weights, layering."""

import subprocess
import sys

import pytest
import torch

from rmeeto import VimArch, create_model, get_config, list_models
from rmeeto.models.vim import arch_facts, arch_from_state_dict


@pytest.mark.parametrize("changes, match", [
    (dict(cls_position="last"), "middle, first, none"),
    (dict(img_size=30, patch_size=4), "multiple of patch_size"),
    (dict(depth=0), "depth must be an int >= 1"),
    (dict(num_classes=-1), "num_classes"),
    (dict(embed_dim=True), "embed_dim"),
    (dict(dt_rank=0), "dt_rank"),
    (dict(divide_out=1), "divide_out"),
])
def test_invalid_values_name_the_problem(changes, match):
    with pytest.raises(ValueError, match=match):
        VimArch(**changes)
    with pytest.raises(ValueError, match=match):  # replace validates again
        VimArch().replace(**changes)


def test_replace_refuses_unknown_fields():
    with pytest.raises(ValueError, match="no field width"):
        VimArch().replace(width=3)


@pytest.mark.parametrize("name, tokens, cls_index", [
    ("vim_tiny_patch16_224", 197, 98), ("vim_small_patch16_224", 197, 98), ("vim_base_patch16_224", 197, 98),
    ("vim_test_patch4_16", 17, 8), ("vim_digits_patch4_32", 65, 32),
])
def test_registered_token_counts(name, tokens, cls_index):
    arch = get_config(name).arch
    assert (arch.num_tokens, arch.cls_index) == (tokens, cls_index)
    model = create_model(name, device="meta")
    assert model.arch == arch and model.num_tokens == tokens and model.cls_position == cls_index
    assert arch.dt_proj_rank == -(-arch.embed_dim // 16) and arch.d_inner == 2 * arch.embed_dim


def test_derived_facts_follow_the_fields():
    arch = VimArch(img_size=32, patch_size=8, cls_position="first", dt_rank=5)
    assert arch.grid_size == (4, 4) and arch.num_patches == 16 and arch.num_tokens == 17
    assert arch.cls_index == 0 and arch.dt_proj_rank == 5
    none = arch.replace(cls_position="none")
    assert none.num_tokens == 16 and none.cls_index is None


def test_overrides_are_described_by_model_arch():
    model = create_model("vim_test_patch4_16", img_size=24, num_classes=3, if_divide_out=False, device="meta")
    assert model.arch == get_config("vim_test_patch4_16").arch.replace(img_size=24, num_classes=3, divide_out=False)
    assert all(not layer.mixer.divide_out for layer in model.layers)
    # the official flag selects the first position
    assert create_model("vim_test_patch4_16", use_middle_cls_token=False, device="meta").arch.cls_position == "first"
    with pytest.raises(NotImplementedError, match="none"):
        create_model("vim_test_patch4_16", cls_position="none", device="meta")
    with pytest.raises(ValueError, match="cls_position"):
        create_model("vim_test_patch4_16", cls_position="end", device="meta")


def test_constructor_kwargs_round_trip():
    for name in list_models(backbone="vim"):
        arch = get_config(name).arch
        assert VimArch.from_kwargs(arch.constructor_kwargs()) == arch


@pytest.mark.parametrize("cls_position, index", [("middle", 8), ("first", 0)])
def test_class_token_is_inserted_at_cls_index(cls_position, index):
    torch.manual_seed(0)
    model = create_model("vim_test_patch4_16", cls_position=cls_position).eval()
    with torch.no_grad():
        model.pos_embed.zero_()
        model.cls_token.fill_(123.0)
        tokens = model.embed(torch.randn(2, 3, 16, 16))
    rows = (tokens[0, :, 0] == 123.0).nonzero().flatten().tolist()
    assert rows == [index] and model.cls_position == index
    _, state = model.forward_tokens(torch.randn(1, 3, 16, 16))
    assert state.cls_index == index


def test_divide_out_halves_the_mixer_output():
    torch.manual_seed(0)
    halved = create_model("vim_test_patch4_16")
    summed = create_model("vim_test_patch4_16", if_divide_out=False)
    summed.load_state_dict(halved.state_dict())
    x = torch.randn(1, 17, 32)
    with torch.no_grad():
        a, _ = halved.layers[0].mixer(x)
        b, _ = summed.layers[0].mixer(x)
    torch.testing.assert_close(b, 2 * a)  # out_proj is linear without bias


# image VideoMamba weights are Vim's (class position, halving and init leave no trace): tests/test_videomamba.py
# reads them back with explicit arguments
READABLE = [n for n in list_models(backbone="vim") if get_config(n).arch.is_video or get_config(n).arch.cls_position == "middle"]


@pytest.mark.parametrize("name", READABLE)
def test_arch_read_back_from_a_state_dict(name):
    arch = get_config(name).arch
    state = create_model(name, device="meta").state_dict()
    assert arch_from_state_dict(state) == arch
    prefixed = {"module." + k: v for k, v in state.items()}
    assert arch_facts(prefixed)["num_tokens"] == arch.num_tokens
    other = create_model(name, img_size=2 * arch.img_size, num_classes=7, device="meta").state_dict()
    assert arch_from_state_dict(other) == arch.replace(img_size=2 * arch.img_size, num_classes=7)


def test_arch_from_state_dict_says_what_is_missing():
    state = create_model("vim_test_patch4_16", device="meta").state_dict()
    del state["pos_embed"]
    with pytest.raises(ValueError, match="img_size"):
        arch_from_state_dict(state)


def test_checkpoint_module_does_not_import_models():
    # rmeeto/__init__ imports everything, so stand in an empty package and import rmeeto.checkpoint alone;
    # the leaf modules it may pull in import nothing else from the package
    code = (
        "import importlib.util, sys, types\n"
        "pkg = types.ModuleType('rmeeto')\n"
        "pkg.__path__ = list(importlib.util.find_spec('rmeeto').submodule_search_locations)\n"
        "sys.modules['rmeeto'] = pkg\n"
        "import rmeeto.checkpoint\n"
        "bad = sorted(m for m in sys.modules if m.startswith('rmeeto.') and m not in ('rmeeto.checkpoint', 'rmeeto.errors', 'rmeeto._hubpath', 'rmeeto._files'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

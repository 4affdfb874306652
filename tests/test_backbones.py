"""Every command and helper treats a ViT/DeiT like a Vim: rmeeto.backbones and the commands built on it."""

from __future__ import annotations

import json

import pytest
import torch

from rmeeto import backbones
from rmeeto.cli import main
from rmeeto.cli.models import model_rows
from rmeeto.flops import flops_table, paper_flops, true_flops
from rmeeto.merge import MergeConfig, apply_merge
from rmeeto.models import create_model
from rmeeto.visualize import DROPPED, token_groups

VIT, VIM = "vit_test_patch4_16", "vim_test_patch4_16"  # both 16x16 input, 17 tokens, 4 blocks, 10 classes
RUN = ["--device", "cpu", "--workers", "0", "--no-progress"]


@pytest.mark.parametrize("name", [VIM, VIT])
def test_helpers_agree_with_the_model(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    cfg = MergeConfig(num_merged=2, interval=backbones.default_interval(name))
    apply_merge(model, cfg)
    assert backbones.depth_of(model) == 4 == len(backbones.blocks_of(model))
    assert backbones.num_tokens_of(model) == 17
    assert backbones.cls_position_of(model) == (0 if name == VIT else 8)
    by_name, by_model = backbones.schedule_for(name, cfg), backbones.schedule_for(model, cfg)
    assert by_name == by_model
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        tokens, state = backbones.forward_tokens(model, x)
        torch.testing.assert_close(backbones.head_logits(model, tokens, state), model(x))
    assert tokens.shape[1] == by_name[-1].tokens_out
    # ToMe merges in every block of a ViT, R-MeeTo at even layers of a Vim
    assert [s.merging for s in by_name] == ([True] * 4 if name == VIT else [False, False, True, False])


def test_scan_backend_is_meaningless_for_a_vit():
    vit = create_model(VIT)
    backbones.set_scan_backend(vit, "auto")
    with pytest.raises(ValueError, match="a ViT has none"):
        backbones.set_scan_backend(vit, "triton")


def test_vit_arch_read_off_a_model_includes_overrides():
    arch = backbones.vit_arch(create_model(VIT, num_classes=3, img_size=24))
    assert (arch.num_classes, arch.img_size, arch.num_tokens, arch.depth, arch.num_heads) == (3, 24, 37, 4, 2)
    assert backbones.vit_arch(VIM) is None and backbones.vit_arch(create_model(VIM)) is None


def test_flops_and_models_rows_for_deit():
    rows = flops_table("deit_small_patch16_224", MergeConfig.paper("deit_small_patch16_224"))
    assert [round(r["paper_gflops"], 3) for r in rows] == [4.599, 3.009]
    assert rows[1]["true_gflops"] == rows[1]["paper_gflops"] and rows[1]["final_tokens"] == 65
    assert paper_flops(create_model(VIT), None) == true_flops(VIT)["total"]
    table = {r["name"]: r for r in model_rows("deit")}
    assert sorted(table) == ["deit_base_patch16_224", "deit_small_patch16_224", "deit_tiny_patch16_224"]
    assert table["deit_tiny_patch16_224"]["params"] == 5_717_416 and table["deit_tiny_patch16_224"]["tokens"] == 197
    assert table["deit_base_patch16_224"]["GFLOPs_paper_merge"] == pytest.approx(11.503, abs=1e-3)
    assert {"vim_tiny_patch16_224", "deit_tiny_patch16_224"} <= {r["name"] for r in model_rows("tiny")}


def test_flops_command_on_a_deit_defaults_to_every_block(capsys):
    assert main(["flops", "deit_tiny_patch16_224", "-r", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["merge"]["interval"] == 1
    assert out["rows"][1]["tokens_per_layer"] == [192, 187, 182, 177, 172, 167, 162, 157, 152, 147, 142, 137]
    assert main(["flops", "deit_tiny_patch16_224", "-r", "5", "--metric", "B"]) != 0
    assert "a ViT merges on its token state" in capsys.readouterr().err


def test_eval_and_sweep_commands_on_a_vit(tmp_path):
    out = tmp_path / "eval.json"
    assert main(["eval", VIT, "-r", "2", "--limit", "20", "--json", str(out), *RUN]) == 0
    result = json.loads(out.read_text())
    assert result["tokens_per_layer"] == [15, 13, 11, 9] and result["merge"]["interval"] == 1 and result["n"] == 20
    assert main(["sweep", VIT, "--num-merged", "0,3", "--limit", "20", "--no-throughput", "--out", str(tmp_path),
                 *RUN]) == 0
    text = (tmp_path / "sweep.csv").read_text()
    assert ",3,5," in text  # r=3 in each of 4 blocks: 17 -> 14 -> 11 -> 8 -> 5 tokens at the head


def test_token_groups_on_a_merged_vit():
    torch.manual_seed(0)
    model = create_model(VIT).eval()
    apply_merge(model, MergeConfig(num_merged=2, interval=1, mode="prune"))
    images = torch.randn(2, 3, 16, 16)
    groups, info = token_groups(model, images)
    assert groups.shape == (2, 4, 4) and info["tokens"] == 9 and info["cls_index"] == 0
    torch.testing.assert_close(info["logits"], model(images))
    for g in groups:  # 8 patches pruned over 4 blocks, the other 8 patch tokens each their own group
        assert int((g == DROPPED).sum()) == 8 and len(g[g != DROPPED].unique()) == 8

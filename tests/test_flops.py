"""FLOPs: the official formula reproduces the published figures; the true count follows the real schedule."""

import argparse
import json

import pytest
import torch

from rmeeto import MergeConfig, apply_merge, create_model, trace_tokens
from rmeeto.cli import CLIError
from rmeeto.cli import flops as flops_cli
from rmeeto.cli._merge_args import merge_config_from_args
from rmeeto.flops import flops_table, paper_flops, true_flops
from rmeeto.models import arch_of

TI, S, B = "vim_tiny_patch16_224", "vim_small_patch16_224", "vim_base_patch16_224"


@pytest.mark.parametrize("name,merged,unmerged,zero", [
    (TI, 1.285, 1.449, 1.493),
    (S, 3.585, 5.077, 5.164),
    (B, 13.207, 18.868, 19.042),
])
def test_paper_formula_reproduces_published_gflops(name, merged, unmerged, zero):
    assert round(paper_flops(name, MergeConfig.paper(name)), 3) == merged
    assert round(paper_flops(name), 3) == unmerged
    # r = 0 with merging on: the formula still charges the matching at every merging layer
    assert round(paper_flops(name, MergeConfig.paper(name, num_merged=0)), 3) == zero


def test_paper_formula_ignores_final_tokens_and_clamping():
    assert paper_flops(TI, MergeConfig.paper(TI)) == paper_flops(TI, MergeConfig.paper(TI, final_tokens=None))
    assert paper_flops(TI, MergeConfig(num_merged=99)) < 0  # no clamping: the official formula goes negative


def test_paper_formula_metric_dims():
    x = paper_flops(S, MergeConfig.paper(S))
    bc = paper_flops(S, MergeConfig.paper(S, metric="B"))
    delta = paper_flops(S, MergeConfig.paper(S, metric="delta"))
    assert bc < x < delta
    assert paper_flops(S, MergeConfig.paper(S, metric="C")) == bc


@pytest.mark.parametrize("name", [TI, S, B])
def test_true_count_covers_both_directions(name):
    true, paper = true_flops(name), paper_flops(name)
    assert true["total"] > paper
    parts = true["breakdown"]
    assert parts["matching"] == 0 and true["tokens_per_layer"] == [197] * 24
    assert abs(sum(parts.values()) - true["total"]) < 1e-9
    # the two scan directions double the per-direction scan term of the formula
    e, di = arch_of(name).embed_dim, arch_of(name).d_inner
    assert parts["scan"] == pytest.approx(2 * 24 * 197 * (9 * di * 16 + 2 * di) / 1e9)
    assert parts["mixer_proj"] == pytest.approx(24 * 197 * 6 * e * e / 1e9)


def test_true_count_reflects_final_tokens_rule():
    with_rule = true_flops(TI, MergeConfig.paper(TI))
    without = true_flops(TI, MergeConfig.paper(TI, final_tokens=None))
    assert with_rule["total"] < without["total"]
    assert with_rule["tokens_per_layer"][-1] == 76 and without["tokens_per_layer"][-1] == 142
    assert with_rule["total"] < true_flops(TI)["total"]
    # r = 0 merges nothing for real, so costs nothing extra (unlike the paper formula)
    assert true_flops(S, MergeConfig(num_merged=0))["total"] == true_flops(S)["total"]


def test_true_tokens_follow_the_actual_forward():
    torch.manual_seed(0)
    model = apply_merge(create_model("vim_test_patch4_16"), MergeConfig(num_merged=3, interval=1))
    records = trace_tokens(model, torch.randn(1, 3, 16, 16))
    assert true_flops(model, model.merge_config)["tokens_per_layer"] == [r["tokens"] for r in records[1:]]


def test_arch_normalisation():
    torch.manual_seed(0)
    model = create_model("vim_test_patch4_16")
    as_dict = dict(img_size=16, patch_size=4, embed_dim=32, depth=4, num_classes=10, drop_path_rate=0.1)
    assert arch_of(model) == arch_of("vim_test_patch4_16") == arch_of(as_dict)
    assert paper_flops(model) == paper_flops("vim_test_patch4_16") == paper_flops(as_dict)
    with pytest.raises(TypeError):
        arch_of(3)
    with pytest.raises(ValueError, match="unknown model"):
        arch_of("vim_huge")


def test_flops_table_rows():
    rows = flops_table(S, MergeConfig.paper(S))
    assert [r["setting"] for r in rows] == ["unmerged", "merged"]
    assert rows[0]["paper_reduction"] == 0 and rows[1]["paper_reduction"] == pytest.approx(1 - 3.5846 / 5.0769, abs=1e-4)
    assert rows[1]["final_tokens"] == 76
    assert len(flops_table(S)) == 1


# ============================================================================================ CLI
def parse(argv):
    parser = argparse.ArgumentParser()
    flops_cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_merge_flags_override_the_preset():
    assert merge_config_from_args(parse([S]), S) is None
    assert merge_config_from_args(parse([S, "--preset", "paper"]), S) == MergeConfig.paper(S)
    got = merge_config_from_args(parse([S, "--preset", "paper", "-r", "5", "--metric", "B", "--final-tokens", "none"]), S)
    assert got == MergeConfig.paper(S, num_merged=5, metric="B", final_tokens=None)
    got = merge_config_from_args(parse([S, "-r", "15", "--odd", "--prune", "--unordered", "--choose", "3c"]), S)
    assert got == MergeConfig(num_merged=15, odd=True, mode="prune", ordered=False, choose=3)
    per_layer = ",".join(["4"] * 11)
    assert merge_config_from_args(parse([S, "-r", per_layer]), S).num_merged == (4,) * 11


@pytest.mark.parametrize("argv,message", [
    ([S, "-r", "1,2"], "2 entries"),
    ([S, "--preset", "paper", "--interval", "5", "-r", "1,1,1"], "3 entries"),
])
def test_merge_flags_errors(argv, message):
    with pytest.raises(CLIError, match=message):
        merge_config_from_args(parse(argv), S)


@pytest.mark.parametrize("argv,message", [
    ([S, "--metric", "k"], "choose from 'x', 'B', 'C', 'delta'"),
    ([S, "--reduce", "max"], "choose from 'sum', 'mean', 'amax', 'amin'"),
    ([S, "--distance", "dot"], "choose from 'cosine', 'l1', 'l2'"),
    ([S, "--preset", "official"], "choose from 'none', 'paper'"),
    ([S, "-r", "x"], "argument -r/--num-merged: expected a non-negative integer"),
    ([S, "--choose", "0"], "argument --choose: expected k >= 1"),
    ([S, "--final-tokens", "1"], "argument --final-tokens: expected an integer >= 2"),
])
def test_merge_flags_invalid_values_are_parser_errors(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse(argv)
    assert message in capsys.readouterr().err


def test_flops_command_prints_both_counts(capsys):
    assert flops_cli.run(parse([TI, "--preset", "paper"])) == 0
    out = capsys.readouterr().out
    assert "1.449" in out and "1.285" in out and "197 197 192 192" in out
    assert flops_cli.run(parse([B, "--preset", "paper", "--json"])) == 0
    data = json.loads(capsys.readouterr().out)
    assert round(data["rows"][1]["paper_gflops"], 3) == 13.207 and data["merge"]["num_merged"] == 11
    with pytest.raises(CLIError, match="unknown model"):
        flops_cli.run(parse(["vim_huge"]))

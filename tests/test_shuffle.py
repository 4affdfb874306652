"""Token shuffling (rmeeto.shuffle) and its use in the Vim MergingBlock and the ViT merge."""

import pytest
import torch

import rmeeto
from rmeeto import MergeConfig, apply_merge
from rmeeto.merge import MergingBlock
from rmeeto.models.vim import TokenState
from rmeeto.shuffle import TokenShuffler, permute_tokens, shuffle_index


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_rate_zero_is_the_identity():
    idx = shuffle_index(4, 17, 8, 0.0, gen(), per_sample=True)
    assert torch.equal(idx, torch.arange(17).expand(4, -1))
    x = torch.randn(4, 17, 5)
    assert torch.equal(permute_tokens(x, idx), x)
    model = rmeeto.create_model("vim_test_patch4_16").eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = model(images)
        apply_merge(model, MergeConfig(num_merged=0, shuffle_rate=0.0))
        assert torch.equal(model(images), ref)


@pytest.mark.parametrize("cls_index", [0, 8, 16])
@pytest.mark.parametrize("per_sample", [False, True])
def test_shuffle_permutes_the_chosen_fraction_and_never_the_class_token(cls_index, per_sample):
    idx = shuffle_index(3, 17, cls_index, 0.5, gen(), per_sample=per_sample)
    assert idx.shape == (3 if per_sample else 1, 17)
    assert torch.equal(idx.sort(dim=1).values, torch.arange(17).expand(idx.shape[0], -1))  # a permutation
    assert (idx[:, cls_index] == cls_index).all()
    assert ((idx != torch.arange(17)).sum(1) <= int(0.5 * 16)).all()  # only the 8 chosen positions move
    assert (idx != torch.arange(17)).any()
    if per_sample:
        assert not (idx[0] == idx[1]).all() or not (idx[1] == idx[2]).all()


def test_shuffling_preserves_the_multiset_of_tokens_and_sizes():
    x = torch.randn(2, 17, 6)
    size = torch.randint(1, 9, (2, 17, 1)).float()
    shuffler = TokenShuffler(0.7, per_sample=True, seed=3)
    y, s = shuffler.permute([x, size], cls_index=0)
    assert torch.equal(y[:, 0], x[:, 0]) and torch.equal(s[:, 0], size[:, 0])
    assert not torch.equal(y, x)
    # rows travel whole: (token, size) pairs are the same multiset
    pairs_in = torch.cat([x, size], -1).sort(dim=1).values
    pairs_out = torch.cat([y, s], -1).sort(dim=1).values
    assert torch.equal(pairs_in, pairs_out)
    assert shuffler.permute([x, None], 0)[1] is None


def test_same_seed_same_permutation_other_seed_other():
    a = [TokenShuffler(0.5, seed=1).index(2, 197, 98) for _ in range(2)]
    b = TokenShuffler(0.5, seed=2).index(2, 197, 98)
    assert torch.equal(a[0], a[1]) and not torch.equal(a[0], b)
    s = TokenShuffler(0.5, seed=1)
    first, second = s.index(2, 197, 98), s.index(2, 197, 98)
    assert not torch.equal(first, second)  # the generator advances: a new permutation every call
    state = torch.get_rng_state()
    TokenShuffler(0.5, seed=1).index(2, 197, 98)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is never touched


def test_config_validation_and_roundtrip():
    for bad in (-0.1, 1.5, True, "0.3"):
        with pytest.raises(ValueError, match="shuffle_rate"):
            MergeConfig(shuffle_rate=bad)
    with pytest.raises(ValueError, match="shuffle_seed"):
        MergeConfig(shuffle_seed=1.5)
    cfg = MergeConfig(num_merged=2, shuffle_rate=0.3, shuffle_per_sample=True, shuffle_in_eval=True, shuffle_seed=7)
    assert MergeConfig.from_dict(cfg.to_dict()) == cfg
    assert not MergeConfig(shuffle_rate=0.1).is_noop and MergeConfig().is_noop
    assert MergeConfig().make_shuffler() is None


def _vim_logits(config, train=False, seed=0):
    torch.manual_seed(0)
    model = rmeeto.create_model("vim_test_patch4_16")  # no drop path: train mode differs only by shuffling
    apply_merge(model, config)
    model.train(train)
    with torch.no_grad():
        return model(torch.randn(2, 3, 16, 16, generator=gen(seed)))


def test_eval_mode_does_not_shuffle_unless_asked():
    plain = _vim_logits(MergeConfig(num_merged=2))
    assert torch.equal(_vim_logits(MergeConfig(num_merged=2, shuffle_rate=0.5)), plain)
    assert not torch.allclose(_vim_logits(MergeConfig(num_merged=2, shuffle_rate=0.5), train=True), plain, atol=1e-4)
    asked = MergeConfig(num_merged=2, shuffle_rate=0.5, shuffle_in_eval=True)
    assert not torch.allclose(_vim_logits(asked), plain, atol=1e-4)
    assert torch.equal(_vim_logits(asked), _vim_logits(asked))  # seeded: reproducible run to run
    assert not torch.equal(_vim_logits(asked), _vim_logits(MergeConfig(**{**asked.to_dict(), "shuffle_seed": 5})))


def test_vim_block_permutes_hidden_residual_and_size_together():
    model = apply_merge(rmeeto.create_model("vim_test_patch4_16").eval(),
                        MergeConfig(num_merged=0, shuffle_rate=0.6, shuffle_in_eval=True, shuffle_seed=4))
    block = model.layers[2]
    assert isinstance(block, MergingBlock)
    seen = {}
    block.add_norm_mix = lambda h, r, st: seen.update(h=h, r=r, st=st)  # capture what the mixer would get
    hidden, residual = torch.randn(2, 17, 32), torch.randn(2, 17, 32)
    size = torch.arange(17.0).expand(2, 17)[..., None]
    block(hidden, residual, TokenState(8, size))
    idx = TokenShuffler(0.6, seed=4).index(2, 17, 8)
    assert not torch.equal(idx, torch.arange(17)[None])
    assert torch.equal(seen["h"], permute_tokens(hidden, idx))
    assert torch.equal(seen["r"], permute_tokens(residual, idx))
    assert torch.equal(seen["st"].size, permute_tokens(size, idx)) and seen["st"].cls_index == 8


def test_shuffling_moves_vim_logits_but_not_an_unmerged_vits():
    """Without merging, a ViT is order-free (attention after position embeddings), a Vim is not."""
    config = MergeConfig(num_merged=0, interval=1, shuffle_rate=0.7, shuffle_in_eval=True)
    torch.manual_seed(0)
    vit = rmeeto.create_model("vit_test_patch4_16").eval()
    x = torch.randn(2, 3, 16, 16, generator=gen(1))
    with torch.no_grad():
        ref = vit(x)
        apply_merge(vit, config)
        torch.testing.assert_close(vit(x), ref, atol=1e-5, rtol=1e-5)
    vim_plain = _vim_logits(MergeConfig(num_merged=0, interval=1))
    vim_shuffled = _vim_logits(MergeConfig(num_merged=0, interval=1, shuffle_rate=0.7, shuffle_in_eval=True))
    assert (vim_shuffled - vim_plain).abs().max() > 1e-3


def test_vit_shuffle_then_ordered_merge_keeps_the_shuffled_order():
    """Shuffled before the metric: the tokens a merged ViT ends with differ from the unshuffled run, and the
    class token and the size total are untouched."""
    torch.manual_seed(0)
    model = rmeeto.create_model("vit_test_patch4_16").eval()
    x = torch.randn(2, 3, 16, 16, generator=gen(1))
    runs = {}
    for rate in (0.0, 0.8):
        apply_merge(model, MergeConfig(num_merged=2, interval=1, shuffle_rate=rate, shuffle_in_eval=True))
        with torch.no_grad():
            _, state = model.forward_tokens(x, track_source=True)
        runs[rate] = state
    assert not torch.equal(runs[0.0].source, runs[0.8].source)
    for state in runs.values():
        assert state.source[:, 0, 0].eq(1).all() and state.source.sum(1).eq(1).all()
        assert state.size.sum(1).eq(17).all()


def test_resume_state_carries_the_shuffle_generator():
    """A re-training run's saved random state includes the shuffler's generator (found through a DDP-style
    ``.module``), so a resumed shuffling run draws the permutations the uninterrupted one would have."""
    import rmeeto
    from rmeeto.merge import MergeConfig, apply_merge
    from rmeeto.train.state import merge_shuffler_of, rng_state, set_rng_state

    model = apply_merge(rmeeto.create_model("vim_test_patch4_16"), MergeConfig(num_merged=2, shuffle_rate=0.5))
    wrapped = torch.nn.Module()
    wrapped.module = model  # as DistributedDataParallel holds it
    shuffler = merge_shuffler_of(wrapped)
    assert shuffler is model.merge_shuffler and merge_shuffler_of(rmeeto.create_model("vim_test_patch4_16")) is None
    saved = rng_state(torch.device("cpu"), shuffler)
    expected = torch.rand(4, generator=shuffler.generator)
    torch.rand(7, generator=shuffler.generator)  # the run goes on, then is killed
    set_rng_state(saved, torch.device("cpu"), shuffler)
    assert torch.equal(torch.rand(4, generator=shuffler.generator), expected)

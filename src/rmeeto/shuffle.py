"""Token shuffling: a random permutation of a fraction of the non-class tokens (R-MeeTo Table 5).

The paper's shuffle model asks how much a backbone depends on token order: at every merging layer, before the
matching metric is computed, ``int(rate * (L - 1))`` of the ``L - 1`` non-class positions are chosen and the
tokens at those positions are permuted among themselves (the class token never moves). Every per-token stream
of that layer (hidden state, residual, sizes, source map) goes through the same permutation, and the ordered
merge that follows keeps the shuffled order.

Two layers, as the merge code:

1. Pure functions. :func:`shuffle_index` draws a gather index ``[rows, L]`` from an explicit
   :class:`torch.Generator` (never the global RNG); :func:`permute_tokens` applies it to any
   ``[batch, L, c]`` tensor.
2. :class:`TokenShuffler`: the settings of one model (rate, per-sample or per-batch, on in eval or not) and the
   one generator all its layers draw from, so a forward is reproducible from the seed and the number of forwards
   before it.

Differences from the official release: it draws from the global CPU RNG seeded at import and shuffles in
evaluation too; here the generator is the model's own (seeded by ``MergeConfig.shuffle_seed``) and evaluation is
unshuffled unless ``shuffle_in_eval`` is set.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

Tensor = torch.Tensor

__all__ = ["shuffle_index", "permute_tokens", "TokenShuffler"]


@torch.no_grad()
def shuffle_index(
    batch: int,
    num_tokens: int,
    cls_index: int,
    rate: float,
    generator: torch.Generator,
    per_sample: bool = False,
    device: Optional[torch.device] = None,
) -> Tensor:
    """Gather index that shuffles ``int(rate * (num_tokens - 1))`` non-class positions among themselves.

    Returns ``[rows, num_tokens]`` int64 with ``rows = batch`` if ``per_sample`` else 1 (one permutation for the
    whole batch, as the official code); row ``b`` maps output position ``t`` to input position
    ``index[b, t]``. The class token's column is always ``cls_index``; fewer than 2 chosen positions give the
    identity. Drawn on the generator's device (CPU generators give the same index on every device), then moved
    to ``device``.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"shuffle rate must be in [0, 1], got {rate}")
    if not 0 <= cls_index < num_tokens:
        raise ValueError(f"cls_index {cls_index} is outside a sequence of {num_tokens} tokens")
    rows = batch if per_sample else 1
    gen_device = generator.device
    index = torch.arange(num_tokens, device=gen_device).expand(rows, -1).clone()
    free = num_tokens - 1  # class-free positions 0 .. free - 1
    k = int(rate * free)
    if k >= 2:
        # argsort of uniform draws = a uniform random permutation per row (ties have probability 0)
        chosen = torch.rand(rows, free, generator=generator, device=gen_device).argsort(dim=1)[:, :k]
        mix = torch.rand(rows, k, generator=generator, device=gen_device).argsort(dim=1)
        moved = chosen.gather(1, mix)
        # class-free position q is token q + (q >= cls_index)
        to_token = lambda q: q + (q >= cls_index).long()  # noqa: E731
        index.scatter_(1, to_token(chosen), to_token(moved))
    return index if device is None else index.to(device)


def permute_tokens(x: Tensor, index: Tensor) -> Tensor:
    """``x`` [batch, L, c] reordered along tokens by ``index`` [1 or batch, L] (from :func:`shuffle_index`)."""
    if index.shape[-1] != x.shape[1]:
        raise ValueError(f"index covers {index.shape[-1]} tokens but the tensor has {x.shape[1]}")
    index = index.to(x.device).expand(x.shape[0], -1)
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


class TokenShuffler:
    """Shuffle settings of one model plus the generator its layers share.

    rate: fraction of the non-class tokens permuted at each merging layer (0..1).
    per_sample: one permutation per image instead of one for the batch (the official behaviour).
    in_eval: also shuffle when the model is in eval mode (the official code does; off by default).
    seed: seeds the model's own CPU generator; same seed and same sequence of forwards = same permutations.
    """

    def __init__(self, rate: float, per_sample: bool = False, in_eval: bool = False, seed: int = 0):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"shuffle rate must be in [0, 1], got {rate}")
        self.rate, self.per_sample, self.in_eval, self.seed = float(rate), bool(per_sample), bool(in_eval), int(seed)
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(self.seed)

    def active(self, training: bool) -> bool:
        """Whether a layer in ``training`` mode shuffles."""
        return self.rate > 0 and (training or self.in_eval)

    def index(self, batch: int, num_tokens: int, cls_index: int, device=None) -> Tensor:
        """Next gather index [1 or batch, num_tokens] (advances the generator)."""
        return shuffle_index(batch, num_tokens, cls_index, self.rate, self.generator, self.per_sample, device)

    def permute(self, tensors: Sequence[Optional[Tensor]], cls_index: int) -> list[Optional[Tensor]]:
        """Draw one index for ``tensors`` (each [batch, L, c_i] or None, all the same batch and L; the first must
        not be None) and apply it to all of them; None stays None (unset sizes are all ones: order-free)."""
        ref = tensors[0]
        index = self.index(ref.shape[0], ref.shape[1], cls_index, ref.device)
        return [None if t is None else permute_tokens(t, index) for t in tensors]

    def __repr__(self) -> str:
        return (f"TokenShuffler(rate={self.rate}, per_sample={self.per_sample}, in_eval={self.in_eval}, "
                f"seed={self.seed})")

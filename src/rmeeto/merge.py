"""R-MeeTo token merging for Vim: pure tensor functions, a validated config, and a model patch.

Three layers, as in ToMe:

1. Pure functions on ``[batch, tokens, channels]`` tensors. :func:`bipartite_match` turns a metric into a
   :class:`MergePlan` (index tensors only); :func:`merge_tokens` applies a plan to any tensor;
   :func:`merge_streams` does the size-weighted average of several streams at once (one gather and one
   scatter for all of them); :func:`plan_cls_index` gives the class token's new position.
2. :class:`MergeConfig`, a frozen validated dataclass, and :meth:`MergeConfig.schedule`, which works out every
   merging layer's token count and class index *statically* from the model's token count, so the forward
   never reads a tensor on the host and shapes are fixed for a given config (CUDA-graph and compile friendly).
3. :func:`apply_merge` swaps the class of the merging blocks to :class:`MergingBlock` (a subclass of
   :class:`~rmeeto.models.vim.Block`): no parameter is renamed, so a checkpoint loads the same before and after.

Differences from the official release (documented in the README):
* metrics ``B``/``C``/``delta`` average the two scan directions token by token (the release flips the wrong
  axis and mixes token t with token L-1-t);
* merging more tokens than a layer has is clamped to ``(L - 1) // 2`` (as the release does) and we warn once
  at :func:`apply_merge`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, NamedTuple, Optional, Sequence, Union

import torch

from rmeeto.models import get_config
from rmeeto.models.vim import Block, TokenState, VisionMamba
from rmeeto.models.vit import ViTConfig
from rmeeto.ops import policy
from rmeeto.ops.triton import merge as merge_triton
from rmeeto.ops.triton.mixer import PlanCache, merging_block_inference
from rmeeto.runtime import check_seed
from rmeeto.shuffle import TokenShuffler

Tensor = torch.Tensor

__all__ = [
    "MergeConfig",
    "MergePlan",
    "LayerSchedule",
    "MergingBlock",
    "apply_merge",
    "remove_merge",
    "bipartite_match",
    "merge_tokens",
    "merge_streams",
    "plan_cls_index",
    "trace_tokens",
    "merge_schedule",
]

METRICS = ("x", "B", "C", "delta")
DISTANCES = ("cosine", "l1", "l2")
REDUCES = ("sum", "mean", "amax", "amin")
MODES = ("merge", "prune")


def _choice(name: str, value: str, valid: Sequence[str]) -> None:
    if value not in valid:
        raise ValueError(f"{name}={value!r} is not valid; choose from {', '.join(map(repr, valid))}")


# ============================================================================================ config
@dataclass(frozen=True)
class MergeConfig:
    """How a Vim merges tokens.

    num_merged: tokens removed at each merging layer: one int for all, or a sequence with one entry per
        merging layer (its length must equal the number of merging layers).
    interval: merge every ``interval``-th layer. Even rule (default): layer i merges iff i > 0 and
        i % interval == 0 (2 -> layers 2, 4, ..., 22). ``odd=True``: i > 0 and (i + 1) % interval == 0.
    ordered: keep surviving tokens in their original spatial order (the paper's main setting); else the
        official unordered layout [kept tokens by score, cls, destination tokens].
    mode: "merge" (size-weighted average into the partner) or "prune" (drop the same tokens).
    metric: similarity source: "x" (the previous mixer output) or the previous mixer's "B", "C" or "delta"
        (both scan directions averaged token by token).
    distance: "cosine", "l1" or "l2" on L2-normalised metric rows.
    choose: partner rank: 1 = most similar (default), k = k-th most similar (the paper's "kc" ablation).
    reduce: how merged values combine: "sum" (size-weighted mean, default), "mean", "amax", "amin".
    final_tokens: if set, the last merging layer instead removes whatever leaves exactly this many tokens
        (the official ``compare`` rule; 76 for 224px models). No-op at that layer if already at or below it.
    shuffle_rate: fraction (0..1) of the non-class tokens randomly permuted at each merging layer before the
        metric (the paper's shuffle model, :mod:`rmeeto.shuffle`); 0 = off.
    shuffle_per_sample: one permutation per image instead of one per batch (the official behaviour).
    shuffle_in_eval: shuffle in eval mode too (the official code does); by default only in training.
    shuffle_seed: seed of the model's own generator (never the global RNG).
    """

    num_merged: Union[int, tuple[int, ...]] = 0
    interval: int = 2
    odd: bool = False
    ordered: bool = True
    mode: str = "merge"
    metric: str = "x"
    distance: str = "cosine"
    choose: int = 1
    reduce: str = "sum"
    final_tokens: Optional[int] = None
    shuffle_rate: float = 0.0
    shuffle_per_sample: bool = False
    shuffle_in_eval: bool = False
    shuffle_seed: int = 0

    def __post_init__(self):
        if isinstance(self.num_merged, (list, tuple)):
            object.__setattr__(self, "num_merged", tuple(int(r) for r in self.num_merged))
            if any(r < 0 for r in self.num_merged):
                raise ValueError(f"num_merged entries must be >= 0, got {self.num_merged}")
        elif isinstance(self.num_merged, bool) or not isinstance(self.num_merged, int) or self.num_merged < 0:
            raise ValueError(f"num_merged must be a non-negative int or a list of them, got {self.num_merged!r}")
        if not isinstance(self.interval, int) or self.interval < 1:
            raise ValueError(f"interval must be an int >= 1, got {self.interval!r}")
        if not isinstance(self.choose, int) or self.choose < 1:
            raise ValueError(f"choose must be an int >= 1 (1 = best partner), got {self.choose!r}")
        if self.final_tokens is not None and self.final_tokens < 2:
            raise ValueError(f"final_tokens must be >= 2 (the class token and one patch), got {self.final_tokens}")
        _choice("mode", self.mode, MODES)
        _choice("metric", self.metric, METRICS)
        _choice("distance", self.distance, DISTANCES)
        _choice("reduce", self.reduce, REDUCES)
        if isinstance(self.shuffle_rate, bool) or not isinstance(self.shuffle_rate, (int, float)) or not (
            0.0 <= self.shuffle_rate <= 1.0
        ):
            raise ValueError(f"shuffle_rate must be a number in [0, 1], got {self.shuffle_rate!r}")
        object.__setattr__(self, "shuffle_rate", float(self.shuffle_rate))
        check_seed("shuffle_seed", self.shuffle_seed)

    # ------------------------------------------------------------------ presets
    @classmethod
    def paper(cls, model_name: str, **overrides) -> "MergeConfig":
        """The official R-MeeTo defaults for a registered model: ordered cosine merge of the previous mixer
        output at even layers, r = 5 (Ti) / 11 (S, B), and, for the models the release ran (those registered
        with a ``compare`` count), its rule that keeps ``num_tokens - merging layers * compare`` tokens after the
        last merging layer: 197 - 11 * 11 = 76 for the ImageNet models (so Vim-Ti merges 71 at layer 22)."""
        cfg = get_config(model_name)
        if isinstance(cfg, ViTConfig):  # ToMe placement in every block (rmeeto.merge_vit)
            return cls(**{**cfg.paper_merge_settings(), **overrides})
        settings = dict(num_merged=cfg.paper_merge.get("num_merged", 0), interval=2, ordered=True)
        compare = cfg.paper_merge.get("compare")
        if compare is not None:  # the release writes this as 197 - 11 * compare
            merging = cls(**settings).merging_layers(cfg.arch.depth)
            settings["final_tokens"] = cfg.arch.num_tokens - len(merging) * compare
        settings.update(overrides)
        return cls(**settings)

    def to_dict(self) -> dict:
        d = asdict(self)
        if isinstance(d["num_merged"], tuple):
            d["num_merged"] = list(d["num_merged"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MergeConfig":
        return cls(**d)

    # ------------------------------------------------------------------ schedule
    def merging_layers(self, depth: int) -> list[int]:
        if self.odd:
            return [i for i in range(1, depth) if (i + 1) % self.interval == 0]
        return [i for i in range(1, depth) if i % self.interval == 0]

    def schedule(self, num_tokens: int, depth: int, cls_index: Optional[int] = None) -> list["LayerSchedule"]:
        """Static plan: one :class:`LayerSchedule` per layer (merging or not), from the token count entering
        layer 0 (class token included) and the class token's starting index (default: the middle)."""
        return merge_schedule(self, num_tokens, depth, cls_index)

    @property
    def is_noop(self) -> bool:
        r = self.num_merged
        return (r == 0 if isinstance(r, int) else not any(r)) and self.final_tokens is None and not self.shuffle_rate

    def make_shuffler(self) -> Optional[TokenShuffler]:
        """The :class:`~rmeeto.shuffle.TokenShuffler` a patched model shares between its layers (None if off)."""
        if not self.shuffle_rate:
            return None
        return TokenShuffler(self.shuffle_rate, self.shuffle_per_sample, self.shuffle_in_eval, self.shuffle_seed)


class LayerSchedule(NamedTuple):
    """What happens at one layer. ``tokens_in``/``cls_in`` enter the layer (before its merge);
    ``num_merged`` is the number actually removed there (after clamping and the final-count rule)."""

    layer: int
    merging: bool
    tokens_in: int
    cls_in: int
    num_merged: int
    requested: int
    tokens_out: int
    cls_out: int


def plan_cls_index(cls_index: int, num_tokens: int, num_merged: int, ordered: bool) -> int:
    """New class-token index after removing ``num_merged`` of ``num_tokens`` tokens (class token included).

    Ordered: floor(cls * (L - r) / L). Unordered: the class token is re-inserted inside the block of kept
    tokens at floor(cls * (t1 - r) / t1), t1 = ceil((L - 1) / 2) the size of the source set (official formulas),
    at most t1 - r (the end of that block).
    """
    if num_merged <= 0:
        return cls_index
    if ordered:
        return (cls_index * (num_tokens - num_merged)) // num_tokens
    t1 = math.ceil((num_tokens - 1) / 2)
    # clamped to the kept-source block: inserting past its end puts the token at its end (the official
    # concatenation does the same), so a class token late in the sequence would otherwise be mis-tracked
    return min((cls_index * (t1 - num_merged)) // t1, t1 - num_merged)


def requested_merges(config: MergeConfig, layers: list[int], host: str, unit: str) -> dict[int, int]:
    """``{layer: num_merged requested there}`` for the merging ``layers`` (a tuple ``num_merged`` gives one count
    per merging layer, an int the same count at each). ``host``/``unit`` name the model and its layers in the
    error raised when a tuple's length does not match."""
    if not isinstance(config.num_merged, tuple):
        return {layer: config.num_merged for layer in layers}
    if len(config.num_merged) != len(layers):
        raise ValueError(f"num_merged has {len(config.num_merged)} entries but this {host} merges at {len(layers)} "
                         f"{unit} ({layers})")
    return dict(zip(layers, config.num_merged))


def merge_schedule(config: MergeConfig, num_tokens: int, depth: int, cls_index: Optional[int] = None):
    cls_index = (num_tokens - 1) // 2 if cls_index is None else cls_index
    layers = config.merging_layers(depth)
    requested_at = requested_merges(config, layers, "model", "layers")
    last = layers[-1] if layers else None
    out, n, cls = [], num_tokens, cls_index
    for i in range(depth):
        if i not in requested_at:
            out.append(LayerSchedule(i, False, n, cls, 0, 0, n, cls))
            continue
        requested = requested_at[i]
        if config.final_tokens is not None and i == last:
            requested = n - config.final_tokens
        r = max(0, min(requested, (n - 1) // 2))
        new_cls = plan_cls_index(cls, n, r, config.ordered)
        out.append(LayerSchedule(i, True, n, cls, r, requested, n - r, new_cls))
        n, cls = n - r, new_cls
    return out


# ============================================================================================ pure ops
class MergePlan(NamedTuple):
    """Index plan of one bipartite merge (no gradients; all int64).

    cls_index: class-token index in the input sequence. The class-free sequence (length T = L - 1) is split by
    parity into sources (even, t1 = ceil(T/2)) and destinations (odd, T - t1).
    unm_idx: [batch, t1 - r, 1] kept sources, by decreasing score.  src_idx: [batch, r, 1] merged sources.
    dst_idx: [batch, r, 1] destination of each merged source.
    order: [batch, L - 1 - r] permutation putting [kept sources, destinations] back in original order
        (only for ordered merges).
    new_cls_index: where the class token goes in the output.
    """

    cls_index: int
    unm_idx: Tensor
    src_idx: Tensor
    dst_idx: Tensor
    order: Optional[Tensor]
    new_cls_index: int


def _drop_cls(x: Tensor, cls_index: int) -> Tensor:
    return torch.cat([x[:, :cls_index], x[:, cls_index + 1 :]], dim=1)


def _insert(x: Tensor, token: Tensor, index: int) -> Tensor:
    return torch.cat([x[:, :index], token, x[:, index:]], dim=1)


@torch.no_grad()
def bipartite_match(
    metric: Tensor,
    cls_index: int,
    num_merged: int,
    *,
    distance: str = "cosine",
    choose: int = 1,
    ordered: bool = True,
    with_order: bool = True,
) -> MergePlan:
    """Match tokens of ``metric`` [batch, L, c] (class token at ``cls_index``) and pick ``num_merged`` to merge.

    Sources are the even class-free indices, destinations the odd ones; each source's partner is its best
    (or ``choose``-th best) destination; the ``num_merged`` sources with the highest partner scores merge.
    ``with_order=False`` skips the permutation only :func:`merge_tokens` needs (the fused merge does not).
    """
    L = metric.shape[1]
    r = max(0, min(num_merged, (L - 1) // 2))
    # sources / destinations straight from the metric (no class-free copy): class-free position q is token
    # q + (q >= cls_index)
    q = torch.arange(L - 1, device=metric.device)
    tok = q + (q >= cls_index).long()
    a, b = metric.index_select(1, tok[0::2]), metric.index_select(1, tok[1::2])
    # rows times their inverse norm (the official code divides: the same up to one float32 rounding, before the
    # metric-dtype rounding below); the fused CUDA matcher computes exactly this
    a = a.float() * (1.0 / torch.linalg.vector_norm(a, dim=-1, keepdim=True, dtype=torch.float32).clamp_min(1e-12))
    b = b.float() * (1.0 / torch.linalg.vector_norm(b, dim=-1, keepdim=True, dtype=torch.float32).clamp_min(1e-12))
    if distance == "cosine":
        # normalised in float32, multiplied in the metric's dtype (the official code runs this matmul under
        # autocast, i.e. in fp16 / bf16 on GPU); float32 metrics stay float32
        scores = (a.to(metric.dtype) @ b.to(metric.dtype).transpose(1, 2)).float()
    elif distance in ("l1", "l2"):
        scores = -torch.cdist(a, b, p=1.0 if distance == "l1" else 2.0)
    else:
        raise ValueError(f"distance={distance!r} is not valid; choose from {', '.join(map(repr, DISTANCES))}")
    k = min(choose, scores.shape[-1])
    if k == 1:
        node_max, node_idx = scores.max(dim=-1)
    else:
        top_val, top_idx = scores.topk(k, dim=-1)
        node_max, node_idx = top_val[..., k - 1], top_idx[..., k - 1]
    edge_idx = node_max.argsort(dim=-1, descending=True, stable=True)[..., None]  # ties: lower index first
    unm_idx, src_idx = edge_idx[:, r:], edge_idx[:, :r]
    dst_idx = node_idx[..., None].gather(dim=1, index=src_idx)
    order = None
    if ordered and with_order:
        # original class-free positions: source j sits at 2j, destination j at 2j + 1
        n_dst = b.shape[1]
        dst_pos = torch.arange(n_dst, device=metric.device).mul_(2).add_(1).expand(metric.shape[0], -1)
        pos = torch.cat([unm_idx[..., 0] * 2, dst_pos], dim=1)
        order = pos.argsort(dim=1)
    new_cls = plan_cls_index(cls_index, L, r, ordered)
    return MergePlan(cls_index, unm_idx, src_idx, dst_idx, order, new_cls)


def merge_tokens(x: Tensor, plan: MergePlan, reduce: str = "sum", prune: bool = False) -> Tensor:
    """Apply ``plan`` to ``x`` [batch, L, c] -> [batch, L - r, c]. With ``prune`` the merged sources are
    dropped and destinations keep their values; otherwise sources are reduced into their destinations
    (``scatter_reduce`` with ``include_self``). No weighting here: see :func:`merge_streams`."""
    c = x.shape[-1]
    cls = x[:, plan.cls_index : plan.cls_index + 1]
    rest = _drop_cls(x, plan.cls_index)
    a, b = rest[:, ::2], rest[:, 1::2]
    unm = a.gather(1, plan.unm_idx.expand(-1, -1, c))
    if not prune and plan.src_idx.shape[1] > 0:
        src = a.gather(1, plan.src_idx.expand(-1, -1, c))
        b = b.scatter_reduce(1, plan.dst_idx.expand(-1, -1, c), src, reduce=reduce)
    if plan.order is not None:
        out = torch.cat([unm, b], dim=1).gather(1, plan.order[..., None].expand(-1, -1, c))
        return _insert(out, cls, plan.new_cls_index)
    return torch.cat([_insert(unm, cls, plan.new_cls_index), b], dim=1)


def merge_streams(
    streams: Sequence[Tensor], size: Optional[Tensor], plan: MergePlan, reduce: str = "sum", prune: bool = False
) -> tuple[list[Tensor], Tensor]:
    """Size-weighted merge of several [batch, L, c_i] streams with one plan.

    new_x = merge(x * s) / merge(s) for every stream (all with the *old* sizes s [batch, L, 1], ones if None),
    new_s = merge(s). With ``prune`` values and sizes are just gathered. The streams are concatenated along
    channels so the whole merge is one gather/scatter chain; each comes back in its own dtype.
    """
    x0 = streams[0]
    if size is None:
        size = torch.ones(x0.shape[0], x0.shape[1], 1, device=x0.device, dtype=torch.float32)
    widths = [s.shape[-1] for s in streams]
    # work in at least float32 (fp16 hidden * sizes up to dozens would lose bits), float64 stays float64
    work = torch.promote_types(torch.promote_types(x0.dtype, size.dtype), torch.float32)
    size = size.to(work)
    if prune:
        packed = torch.cat([s.to(work) for s in streams] + [size], dim=-1)
        merged = merge_tokens(packed, plan, reduce, prune=True)
        *outs, new_size = merged.split(widths + [1], dim=-1)
    else:
        packed = torch.cat([s.to(work) * size for s in streams] + [size], dim=-1)
        merged = merge_tokens(packed, plan, reduce)
        *outs, new_size = merged.split(widths + [1], dim=-1)
        outs = [o / new_size for o in outs]
    return [o.to(s.dtype) for o, s in zip(outs, streams)], new_size


# ============================================================================================ model patch
@dataclass(frozen=True)
class _LayerMerge:
    num_merged: int
    metric: str
    distance: str
    choose: int
    ordered: bool
    reduce: str
    prune: bool
    shuffle: Optional[TokenShuffler] = None  # one object per model, shared by its layers


def _use_fused(hidden: Tensor, cfg: "_LayerMerge", backend: str = "auto") -> bool:
    """The fused CUDA merge (rmeeto.ops.triton.merge) serves the default merge (reduce "sum", no pruning)
    where the kernel policy allows it (rmeeto.ops.policy: CUDA tensors, RMEETO_FUSED_MERGE=0 turns it off)."""
    return (
        cfg.reduce == "sum" and not cfg.prune and merge_triton.is_available()
        and policy.use_fused("merge", hidden, backend)
    )


class MergingBlock(Block):
    """A :class:`Block` that first merges ``merge.num_merged`` tokens of both streams with one plan.

    The metric is the incoming ``hidden`` (the previous mixer output) or the B/C/delta metric the previous
    block exported in ``state.metric``. Class-token index and sizes travel in the returned ``TokenState``.
    """

    merge: _LayerMerge

    def _folds_norm(self, hidden: Tensor, residual: Tensor, backend: str) -> bool:
        """Whether the fused merge also does this block's residual add + RMSNorm (one kernel): inference (no
        gradient, no drop path), a float32 residual, the norm kernel and the switch ``merge_norm`` on for
        ``backend`` (rmeeto.ops.policy.op_backend of this block's scan). Traced by torch.compile, the step is
        then one opaque op: with the mixer after it (``rmeeto::merging_block_inference``) where the mixer's
        inference op serves, else alone (``rmeeto::match_merge_add_norm``)."""
        if self.drop_path.drop_prob > 0 or not self.residual_in_fp32:
            return False
        if torch.is_grad_enabled() and (hidden.requires_grad or residual.requires_grad
                                        or self.norm.weight.requires_grad):
            return False
        return (residual.dtype == torch.float32 and policy.use_fused("norm", hidden, backend)
                and policy.use_fused("merge_norm", hidden, backend))

    def _prepared_merge(self, hidden: Tensor, residual: Tensor, state: TokenState
                        ) -> Optional[merge_triton.MergeNormPlan]:
        """The prepared merging step (:class:`rmeeto.ops.triton.merge.MergeNormPlan`) for these inputs, or None
        where :meth:`forward` takes its general path: a gradient may be needed, torch.compile is tracing, sources
        are tracked, the metric is not the hidden states, the shuffle is active, or, decided once per signature
        (shapes, strides and dtypes of hidden, residual and sizes, class index, merge settings, mode, norm
        weight, kernel switches), the general path would not run :func:`match_merge_add_norm` on them without a
        copy, or its switch ``plan`` is off."""
        cfg = self.merge
        if (torch.is_grad_enabled() or torch.compiler.is_compiling() or state.source is not None
                or cfg.metric != "x" or (cfg.shuffle is not None and cfg.shuffle.active(self.training))):
            return None
        size = state.size
        w = self.norm._parameters["weight"]
        key = (hidden.shape, hidden.stride(), hidden.dtype, hidden.device, residual.shape, residual.stride(),
               residual.dtype, None if size is None else (size.shape, size.stride(), size.dtype), state.cls_index,
               cfg, self.training, policy.generation(), self.mixer.scan_backend, w.data_ptr(), w.dtype, self.norm.eps)
        plans = self.__dict__.get("_merge_plans")
        if plans is None:
            plans = self.__dict__["_merge_plans"] = PlanCache()
        if key in plans:
            return plans[key]
        plan = None
        backend = policy.op_backend(self.mixer.scan_backend)
        L = hidden.shape[1]
        r = max(0, min(cfg.num_merged, (L - 1) // 2))
        if (r > 0 and cfg.distance == "cosine" and cfg.choose == 1 and _use_fused(hidden, cfg, backend)
                and policy.use_fused("plan", hidden, backend) and self._folds_norm(hidden, residual, backend)
                and hidden.stride(2) == 1 and residual.stride(2) == 1
                and (size is None or (size.dtype == torch.float32 and size.is_contiguous()))):
            new_cls = plan_cls_index(state.cls_index, L, r, cfg.ordered)
            if merge_triton.match_spec(hidden, state.cls_index, r, new_cls, cfg.ordered) is not None:
                plan = merge_triton.MergeNormPlan(r, state.cls_index, new_cls, cfg.ordered, self.norm.eps)
        return plans.put(key, plan)

    def forward(self, hidden: Tensor, residual: Optional[Tensor], state: TokenState):
        cfg = self.merge
        if cfg.num_merged > 0 and residual is not None:
            plan = self._prepared_merge(hidden, residual, state)
            if plan is not None:  # inference: the match and the merge + add + norm prepared (two launches)
                residual, normed, size = plan(hidden, residual, state.size, self.norm.weight)
                return self.mix(normed, residual, TokenState(plan.new_cls_index, size, None, None))
        if cfg.shuffle is not None and residual is not None and cfg.shuffle.active(self.training):
            # shuffled tensors are plain inputs to the merge below: the fused path stays correct on them
            hidden, residual, *rest = cfg.shuffle.permute([hidden, residual, *state[1:]], state.cls_index)
            state = TokenState(state.cls_index, *rest)
        if cfg.num_merged > 0 and residual is not None:
            metric = hidden if cfg.metric == "x" else state.metric
            backend = policy.op_backend(self.mixer.scan_backend)
            fused = _use_fused(hidden, cfg, backend)
            L = hidden.shape[1]
            r = max(0, min(cfg.num_merged, (L - 1) // 2))
            if fused and r > 0 and cfg.distance == "cosine" and cfg.choose == 1 and state.source is None:
                # matching and merge in two kernel launches (rmeeto.ops.triton.merge)
                new_cls = plan_cls_index(state.cls_index, L, r, cfg.ordered)
                if self._folds_norm(hidden, residual, backend):
                    if (torch.compiler.is_compiling() and metric is hidden and self.export_metric is None
                            and self.mixer.traces_inference(hidden)):
                        # traced: the whole merging block one op (the mixer's input, the normed merged tokens,
                        # has hidden's dtype, device and layout: the mixer's decision on hidden is the same)
                        hidden, residual, size = merging_block_inference(
                            hidden, residual, state.size, state.cls_index, r, new_cls, cfg.ordered, self.norm.weight,
                            self.norm.eps, *self.mixer.plan_args())
                        return hidden, residual, TokenState(new_cls, size, None, None)
                    # inference: merge, residual add and RMSNorm in one kernel after the plan's two
                    residual, normed, size = merge_triton.match_merge_add_norm(
                        hidden, residual, state.size, metric, state.cls_index, r, new_cls, cfg.ordered,
                        self.norm.weight, self.norm.eps,
                    )
                    return self.mix(normed, residual, TokenState(new_cls, size, None, None))
                (hidden, residual), size = merge_triton.match_merge_fused(
                    hidden, residual, state.size, metric, state.cls_index, r, new_cls, cfg.ordered
                )
                state = TokenState(new_cls, size, None, None)
                return self.add_norm_mix(hidden, residual, state)
            plan = bipartite_match(
                metric, state.cls_index, cfg.num_merged, distance=cfg.distance, choose=cfg.choose,
                ordered=cfg.ordered, with_order=not fused or state.source is not None,
            )
            if fused:
                (hidden, residual), size = merge_triton.merge_streams_fused(
                    hidden, residual, state.size, plan, cfg.ordered
                )
            else:
                (hidden, residual), size = merge_streams([hidden, residual], state.size, plan, cfg.reduce, cfg.prune)
            source = state.source
            if source is not None:
                source = merge_tokens(source, plan, "amax", prune=cfg.prune)
            state = TokenState(plan.new_cls_index, size, None, source)
        return self.add_norm_mix(hidden, residual, state)


def warn_if_merging_nowhere(config: MergeConfig, depth: int) -> bool:
    """Warn (and return True) when ``config`` asks for merging but its interval leaves no merging layer in a
    ``depth``-layer model, e.g. ``-r 2 --interval 100``: the model would silently run unmerged."""
    r = config.num_merged
    wants = (r != 0 if isinstance(r, int) else any(r)) or config.final_tokens is not None
    if not wants or config.merging_layers(depth):
        return False
    warnings.warn(
        f"--interval {config.interval}{' --odd' if config.odd else ''} merges at no layer of this model's "
        f"{depth} layers (layers 1..{depth - 1} are eligible): nothing is merged; use an interval below {depth}",
        stacklevel=3,
    )
    return True


def apply_merge(model: VisionMamba, config: MergeConfig) -> VisionMamba:
    """Turn ``model`` into a merging Vim in place (and return it). Parameters and their names are untouched;
    calling again replaces the previous config; ``MergeConfig()`` (0 tokens) makes it an exact no-op.
    Other backbones (timm ViTs: :mod:`rmeeto.merge_vit`) are dispatched to their registered patch."""
    patch = _backbone_patch(model)
    if patch is not None:
        return patch.apply_merge(model, config)
    remove_merge(model)
    depth = len(model.layers)
    sched = config.schedule(model.num_tokens, depth, model.cls_position)
    clamped = [s for s in sched if s.merging and s.requested > s.num_merged and s.requested > 0]
    if clamped and config.final_tokens is None:
        s = clamped[0]
        warnings.warn(
            f"merging {s.requested} tokens at layer {s.layer} is more than its {s.tokens_in} tokens allow; "
            f"clamped to {s.num_merged} ((tokens - 1) // 2) there and at {len(clamped) - 1} later layer(s)",
            stacklevel=2,
        )
    warn_if_merging_nowhere(config, depth)
    final = [s for s in sched if s.merging][-1:] if config.final_tokens is not None else []
    if final and final[0].tokens_in <= config.final_tokens:
        warnings.warn(
            f"final_tokens={config.final_tokens}: only {final[0].tokens_in} tokens reach the last merging layer "
            f"(layer {final[0].layer}), so it merges nothing; give fewer final tokens than that",
            stacklevel=2,
        )
    shuffler = config.make_shuffler()
    for s in sched:
        if s.merging:
            layer = model.layers[s.layer]
            layer.__class__ = MergingBlock
            layer.merge = _LayerMerge(
                s.num_merged, config.metric, config.distance, config.choose, config.ordered, config.reduce,
                config.mode == "prune", shuffler,
            )
            if config.metric != "x":
                model.layers[s.layer - 1].export_metric = config.metric
    model.merge_config = config
    model.merge_shuffler = shuffler  # its generator state is what a resume would need to save
    return model


def remove_merge(model: VisionMamba) -> VisionMamba:
    """Undo :func:`apply_merge` (in place)."""
    patch = _backbone_patch(model)
    if patch is not None:
        return patch.remove_merge(model)
    for layer in model.layers:
        if isinstance(layer, MergingBlock):
            layer.__class__ = Block
            del layer.merge
        if "export_metric" in layer.__dict__:
            del layer.export_metric
    model.merge_config = None
    model.merge_shuffler = None
    return model


@torch.no_grad()
def trace_tokens(model: VisionMamba, images: Tensor) -> list[dict]:
    """Run ``model`` on ``images`` and return, per layer, the token count and class index *entering* it
    (before that layer's merge), plus the final count and index the head reads (``layer = depth``)."""
    patch = _backbone_patch(model)
    if patch is not None:
        return patch.trace_tokens(model, images)
    records: list[dict] = []

    def hook(module, args):
        hidden, _, state = args
        records.append({"layer": len(records), "tokens": hidden.shape[1], "cls_index": state.cls_index})

    handles = [layer.register_forward_pre_hook(hook) for layer in model.layers]
    try:
        tokens, state = model.forward_tokens(images)
    finally:
        for h in handles:
            h.remove()
    records.append({"layer": len(model.layers), "tokens": tokens.shape[1], "cls_index": state.cls_index})
    return records


# ============================================================================================ other backbones
class BackbonePatch(NamedTuple):
    """How :func:`apply_merge`, :func:`remove_merge` and :func:`trace_tokens` handle a non-Vim backbone."""

    accepts: Callable[[torch.nn.Module], bool]
    apply_merge: Callable[[torch.nn.Module, MergeConfig], torch.nn.Module]
    remove_merge: Callable[[torch.nn.Module], torch.nn.Module]
    trace_tokens: Callable[[torch.nn.Module, Tensor], list]


# filled by the backbone modules at import (rmeeto.merge_vit registers timm ViTs), so this module needs no
# knowledge of them and they can build on its pure ops without an import cycle
_BACKBONE_PATCHES: list[BackbonePatch] = []


def register_backbone_patch(patch: BackbonePatch) -> None:
    _BACKBONE_PATCHES.append(patch)


def _backbone_patch(model: torch.nn.Module) -> Optional[BackbonePatch]:
    return next((p for p in _BACKBONE_PATCHES if p.accepts(model)), None)

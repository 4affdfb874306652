"""Vision Mamba (Vim), the official "midclstok" ImageNet models, in pure PyTorch.

Paper: "Vision Mamba: Efficient Visual Representation Learning with Bidirectional State Space Model"
(Zhu et al., 2024, https://arxiv.org/abs/2401.09417). Parameter names and shapes are those of the official
checkpoints (``vim_t_midclstok_76p1acc.pth`` etc.), so they load untouched.

Structure of the forward (see ``shared/SPEC.md`` section 1 of this project for the full description):

    tokens = patch_embed(image)                    [batch, M, E]
    insert cls at position M // 2, add pos_embed   [batch, M + 1, E]
    24 x Block: residual += drop_path(hidden); hidden = Mixer(RMSNorm(residual))   (residual in float32)
    logits = head(RMSNorm(residual + hidden)[:, cls_index])

Token merging (``rmeeto.merge``) swaps in a block subclass; it never renames a parameter.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any, NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from rmeeto.checkpoint import CheckpointError, FilterResult, plain_filter, strip_prefixes, unwrap_module
from rmeeto.models._arch import VimArch
from rmeeto.ops import policy
from rmeeto.ops.conv import conv_silu, conv_silu_bidir
from rmeeto.ops.embed import embed_tokens, insert_cls_add_pos, patch_rows
from rmeeto.ops.norm import drop_add_rms_norm, drop_path, rms_norm
from rmeeto.ops.inproj import in_proj as inproj_op
from rmeeto.ops.outproj import sum_out_proj
from rmeeto.ops.proj import fused_applies as proj_fused_applies
from rmeeto.ops.proj import fused_scan_inputs
from rmeeto.ops.proj import kernel_fits as proj_kernel_fits
from rmeeto.ops.proj import split_x_dbl
from rmeeto.ops.selective_scan import resolve_backend, selective_scan, selective_scan_bidir, sum_directions
from rmeeto.ops.triton.mixer import (MixerPlan, MixerTensors, PlanCache, block_inference, mixer_inference,
                                     plan_problem, weights_key)

Tensor = torch.Tensor

__all__ = [
    "RMSNorm", "BiMambaMixer", "Block", "VisionMamba", "TokenState", "checkpoint_filter_fn", "filter_state_dict",
    "resample_pos_embed", "arch_facts", "arch_from_state_dict",
]

# Global module hooks (torch.nn.modules.module.register_module_forward_hook & co.): a mixer's prepared
# inference path skips the calls of in_proj / out_proj, so it stands aside while any is installed
_GLOBAL_HOOKS = tuple(getattr(nn.modules.module, name, {}) for name in (
    "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks", "_global_backward_pre_hooks"))
# (kept under this name: models pickled by earlier releases hold rmeeto.models.vim._PlanCache)
_PlanCache = PlanCache


def _norm_fits(hidden: Tensor, residual: Optional[Tensor], norm: "RMSNorm", scan_backend: str) -> bool:
    """Would :func:`rmeeto.ops.norm.drop_add_rms_norm` (inference, float32 residual) run the norm kernel on these
    without a copy (what a plan's :meth:`rmeeto.ops.triton.mixer.MixerPlan.add_norm` does)?"""
    w = norm.weight
    return (policy.use_fused("norm", hidden, policy.op_backend(scan_backend)) and hidden.is_contiguous()
            and w.shape == hidden.shape[-1:] and w.is_contiguous() and w.device == hidden.device
            and (residual is None or (residual.dtype == torch.float32 and residual.is_contiguous()
                                      and residual.shape == hidden.shape and residual.device == hidden.device)))


class TokenState(NamedTuple):
    """What travels between blocks besides the two activation streams.

    cls_index: position of the class token in the current sequence (a Python int: shapes are static, so it
        is known without reading any tensor).
    size: [batch, tokens, 1] number of original patches each token stands for (None until the first merge).
    metric: [batch, tokens, c] the matching metric the *previous* block exported for the next merge, if any.
    source: [batch, tokens, original_tokens] 0/1 map to original tokens, only when tracking is on.
    """

    cls_index: int
    size: Optional[Tensor] = None
    metric: Optional[Tensor] = None
    source: Optional[Tensor] = None


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, computed in float32, returned in ``out_dtype`` (default x's)."""

    def __init__(self, dim: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: Tensor, out_dtype: Optional[torch.dtype] = None) -> Tensor:
        return rms_norm(x, self.weight, self.eps, out_dtype)


class DropPath(nn.Module):
    """Stochastic depth per sample (identity when ``p == 0`` or in eval mode)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    @property
    def drop_prob(self) -> float:
        """The probability in effect now: ``p`` in training mode, 0 in eval mode."""
        return self.p if self.training else 0.0

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.drop_prob)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class BiMambaMixer(nn.Module):
    """Bidirectional Mamba mixer ("bimamba v2"): two selective-scan branches with separate parameters over the
    same input, one reading the sequence forwards and one backwards, averaged, then projected out.

    Both branches run in original token order: the backward branch uses a mirrored (anti-causal) conv and a
    reversed scan, which is exactly the official flip -> causal branch -> flip computation without copies.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: Optional[int] = None,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        divide_out: bool = True,
        scan_backend: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank is None else dt_rank
        self.divide_out = divide_out
        self.scan_backend = scan_backend
        self._plans = PlanCache()  # see plan()
        di, r, n = self.d_inner, self.dt_rank, d_state

        self.in_proj = nn.Linear(d_model, 2 * di, bias=False, **kw)
        # parameter registration order follows the official state dict
        A = torch.arange(1, n + 1, dtype=torch.float32, device=device).repeat(di, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(di, device=device))
        self.A_b_log = nn.Parameter(torch.log(A.clone()))
        self.D_b = nn.Parameter(torch.ones(di, device=device))
        self.conv1d = nn.Conv1d(di, di, d_conv, groups=di, bias=True, **kw)
        self.x_proj = nn.Linear(di, r + 2 * n, bias=False, **kw)
        self.dt_proj = nn.Linear(r, di, bias=True, **kw)
        self.conv1d_b = nn.Conv1d(di, di, d_conv, groups=di, bias=True, **kw)
        self.x_proj_b = nn.Linear(di, r + 2 * n, bias=False, **kw)
        self.dt_proj_b = nn.Linear(r, di, bias=True, **kw)
        self.out_proj = nn.Linear(di, d_model, bias=False, **kw)
        for p in (self.A_log, self.D, self.A_b_log, self.D_b):
            p._no_weight_decay = True

        # official init of the forward dt projection (the backward one keeps the default init; see SPEC quirks)
        std = r**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(di, device=device) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.dt_proj.bias._no_reinit = True

    def scan_inputs(self, u: Tensor, reverse: bool, align: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """The input-dependent scan parameters of one direction: u [batch, length, d_inner] (its conv output)
        -> pre-bias delta [batch, length, d_inner], B, C [batch, length, d_state] (x_proj and dt_proj).
        ``align`` (the Triton scan reads B and C): B and C in 16-byte aligned rows
        (:func:`rmeeto.ops.proj.split_x_dbl`; what changes is Vim-Ti's training path)."""
        x_proj: nn.Linear = self.x_proj_b if reverse else self.x_proj
        dt_proj: nn.Linear = self.dt_proj_b if reverse else self.dt_proj
        dt_low, Bm, Cm = split_x_dbl(x_proj(u), self.dt_rank, self.d_state, align)  # x_proj: [.., r + 2n]
        delta = F.linear(dt_low, dt_proj.weight)  # [batch, length, d_inner], bias is added inside the scan
        return delta, Bm, Cm

    def _fused_proj_weights(self, u_f: Tensor, u_b: Tensor, backend: str
                            ) -> Optional[tuple[Tensor, Tensor, Tensor, Tensor]]:
        """The x_proj / x_proj_b / dt_proj / dt_proj_b weights when the fused kernel takes the four GEMMs for
        these conv outputs (:func:`rmeeto.ops.proj.fused_applies`: no gradient to flow, 16-bit CUDA tensors)
        and both x_proj are plain bias-free ``nn.Linear`` without hooks (the kernel reads their weights instead
        of calling them, as :meth:`scan_inputs` already does for dt_proj); else None."""
        xf, xb = self.x_proj, self.x_proj_b
        for m in (xf, xb):
            if type(m) is not nn.Linear or m.bias is not None or m._forward_hooks or m._forward_pre_hooks:
                return None
        weights = (xf.weight, xb.weight, self.dt_proj.weight, self.dt_proj_b.weight)
        return weights if proj_fused_applies(u_f, u_b, *weights, backend) else None

    def _triton_scan(self, device: torch.device) -> bool:
        """Whether this mixer's scans run the Triton kernels on ``device`` (its backend resolved there)."""
        return resolve_backend(self.scan_backend, device) == "triton"

    def branch(self, x: Tensor, z: Tensor, reverse: bool) -> tuple[Tensor, dict[str, Tensor]]:
        """One scan direction on its own (the per-direction form of :meth:`forward`). x, z: [batch, length,
        d_inner] (channels-last views of in_proj's output) -> y [batch, length, d_inner] (gated), plus the
        input-dependent B, C ([batch, length, d_state]) and the pre-bias delta ([batch, length, d_inner]).
        Everything stays channels-last: no transposed copies."""
        suffix = "_b" if reverse else ""
        conv: nn.Conv1d = getattr(self, "conv1d" + suffix)
        dt_proj: nn.Linear = getattr(self, "dt_proj" + suffix)
        A_log = getattr(self, "A_b_log" if reverse else "A_log")  # A = -exp(A_log), formed by the scan
        D = getattr(self, "D" + suffix)

        u = conv_silu(x, conv.weight, conv.bias, reverse=reverse, backend=policy.op_backend(self.scan_backend))
        delta, Bm, Cm = self.scan_inputs(u, reverse, self._triton_scan(u.device))
        y = selective_scan(
            u.transpose(1, 2), delta.transpose(1, 2), A_log, Bm.transpose(1, 2), Cm.transpose(1, 2), D,
            z.transpose(1, 2), delta_bias=dt_proj.bias, delta_softplus=True, reverse=reverse,
            backend=self.scan_backend, a_is_log=True,
        )
        return y.transpose(1, 2), {"B": Bm, "C": Cm, "delta": delta}

    def _plan_tensors(self) -> MixerTensors:
        # the submodules' parameter dicts read directly: Module.__getattr__ per weight cost ~0.5 us each
        m, p = self._modules, self._parameters
        ip, op = m["in_proj"]._parameters, m["out_proj"]._parameters
        cv, cb = m["conv1d"]._parameters, m["conv1d_b"]._parameters
        dt, db = m["dt_proj"]._parameters, m["dt_proj_b"]._parameters
        return MixerTensors(ip["weight"], ip["bias"], cv["weight"], cv["bias"], cb["weight"], cb["bias"],
                            m["x_proj"]._parameters["weight"], m["x_proj_b"]._parameters["weight"], dt["weight"],
                            db["weight"], dt["bias"], db["bias"], p["A_log"], p["A_b_log"], p["D"], p["D_b"],
                            op["weight"], op["bias"])

    def plan(self, hidden: Tensor, norm: Optional[RMSNorm] = None, residual: Optional[Tensor] = None
             ) -> Optional[tuple[MixerPlan, MixerTensors]]:
        """The prepared inference path for ``hidden`` (:class:`rmeeto.ops.triton.mixer.MixerPlan`) and the
        weights to call it with, or None where :meth:`forward` takes its general path: a gradient may be
        needed, torch.compile is tracing, autocast is on, a forward hook sits on a Linear layer the general
        path calls (or globally), a layer is not a plain ``nn.Linear``, or, decided once per input signature
        (shape, strides, dtype, device, the weights' addresses and dtypes, the kernel switches): the switch
        ``plan`` is off, a kernel of the fused path would not run (the scan, conv or projection kernel), or
        :func:`rmeeto.ops.triton.mixer.plan_problem` finds a layout the general path would copy first.

        With ``norm`` (and ``residual``, float32 or None) the plan also serves the block's residual add + RMSNorm
        before the mixer (:meth:`MixerPlan.add_norm`; ``hidden`` is then the block's input): only where the
        norm kernel would run on them without copies (contiguous, the norm switch on)."""
        if torch.compiler.is_compiling() or not self._inference_only(hidden):
            return None
        tensors = self._plan_tensors()
        key = (hidden.shape, hidden.stride(), hidden.dtype, hidden.device, policy.generation(), self.scan_backend,
               self.divide_out, weights_key(tensors))  # (Vim's in_proj / out_proj have no bias)
        if norm is not None:
            w = norm._parameters["weight"]
            key += (None if residual is None else (residual.shape, residual.stride(), residual.dtype),
                    w.data_ptr(), w.dtype, norm.eps)
        plans = self.__dict__.get("_plans")
        if plans is None:  # (a mixer unpickled from an older release has none)
            plans = self.__dict__["_plans"] = PlanCache()
        if key in plans:
            plan = plans[key]
        else:
            plan = self._make_plan(hidden, tensors)
            if plan is not None and norm is not None and not _norm_fits(hidden, residual, norm, self.scan_backend):
                plan = None
            plans.put(key, plan)
        return None if plan is None else (plan, tensors)

    def _inference_only(self, hidden: Tensor) -> bool:
        """No gradient, autocast or hook asks for the general path: the conditions of :meth:`plan` that are not
        the inputs' signature (also those of the traced inference op, :meth:`forward`)."""
        if torch.is_grad_enabled() or any(_GLOBAL_HOOKS):
            return False
        m = self._modules
        for name in ("in_proj", "out_proj", "x_proj", "x_proj_b"):
            lin = m[name]
            if type(lin) is not nn.Linear or lin._forward_hooks or lin._forward_pre_hooks:
                return False
        return not torch.is_autocast_enabled(hidden.device.type)

    def _make_plan(self, hidden: Tensor, tensors: MixerTensors) -> Optional[MixerPlan]:
        """A plan where one can serve (see :meth:`plan`), else None. Reads only the signature of ``hidden`` and
        the weights (so it also decides, while torch.compile traces, whether the traced op can serve)."""
        backend = policy.op_backend(self.scan_backend)
        if not (policy.use_fused("plan", hidden, backend) and policy.use_fused("conv", hidden, backend)):
            return None
        if plan_problem(hidden, tensors, self.d_state) is not None:
            return None
        if not self._triton_scan(hidden.device):
            return None
        if not proj_kernel_fits(hidden, tensors.x_proj, tensors.dt_proj, backend):  # u has hidden's dtype, device
            return None
        return MixerPlan(self.d_inner, self.dt_rank, self.d_state, self._scale())

    def _scale(self) -> float:
        return 0.5 if self.divide_out else 1.0

    def plan_args(self) -> tuple[MixerTensors, int, float]:
        """(weights, d_state, output scale): what the traced inference ops (:meth:`traces_inference`) take."""
        return self._plan_tensors(), self.d_state, self._scale()

    def traces_inference(self, hidden: Tensor, norm: Optional[RMSNorm] = None, residual: Optional[Tensor] = None
                         ) -> bool:
        """While torch.compile traces: whether this mixer's forward on ``hidden`` (with ``norm``, the block's
        residual add + RMSNorm before it too) traces as one inference op, ``rmeeto::mixer_inference`` (or
        ``rmeeto::block_inference``): where eager mode would take a plan (:meth:`plan`), decided from the
        signatures alone."""
        return (self._inference_only(hidden) and self._make_plan(hidden, self._plan_tensors()) is not None
                and (norm is None or _norm_fits(hidden, residual, norm, self.scan_backend)))

    def _hooked(self) -> bool:
        """A forward hook on this mixer: it must be called as a module, ``self(...)``. (Global hooks are
        :meth:`_inference_only`'s: with one installed, :meth:`plan` gives None.)"""
        return bool(self._forward_hooks or self._forward_pre_hooks)

    def forward(self, hidden: Tensor, export: Optional[str] = None) -> tuple[Tensor, Optional[Tensor]]:
        """hidden: [batch, length, d_model] -> (out [batch, length, d_model], metric or None).

        ``export`` in {None, "B", "C", "delta"} asks for that scan input, averaged over the two directions
        token by token ([batch, length, d_state or d_inner]); used as the next merge's matching metric.

        Both directions share their kernel launches: one conv for both (:func:`conv_silu_bidir`), one scan for
        both (:func:`selective_scan_bidir`, which also applies the 1/2 of ``divide_out``); the x_proj / dt_proj
        GEMMs run per direction, except in inference, where one kernel does the four
        (:func:`rmeeto.ops.proj.bidir_scan_inputs`). With the GEMMs per direction the result is the two
        :meth:`branch` calls' (y_f + y_b) / 2 bit for bit (halving commutes with rounding outside fp16's
        subnormal range); the fused kernel's sums run in another order, so equal to rounding. In inference the
        directions' sum and out_proj are one kernel where it applies (:func:`rmeeto.ops.outproj.sum_out_proj`;
        also equal to rounding), unless out_proj is not a plain ``nn.Linear`` or a hook sits on it; on Hopper,
        in_proj at Vim-Ti's width (Vim-S's on short sequences) runs as TMA tiles
        (:func:`rmeeto.ops.inproj.in_proj`; equal to rounding), on the same terms for in_proj.
        """
        if export is None:
            if torch.compiler.is_compiling():
                # inference traced: one opaque op running the plan's launches, which Inductor cannot better
                if self.traces_inference(hidden):
                    return mixer_inference(hidden, *self.plan_args()), None
            else:
                prepared = self.plan(hidden)
                if prepared is not None:  # inference: the same launches, less host work (rmeeto.ops.triton.mixer)
                    return prepared[0](hidden, prepared[1]), None
        elif export not in ("B", "C", "delta"):
            raise ValueError(f"export must be None, 'B', 'C' or 'delta', got {export!r}")
        backend = policy.op_backend(self.scan_backend)
        in_proj = self._modules["in_proj"]
        if type(in_proj) is nn.Linear and not (in_proj._forward_hooks or in_proj._forward_pre_hooks
                                               or any(_GLOBAL_HOOKS)):
            # TMA tiles on Hopper where they apply (inference, Vim-Ti's width), as a plan runs them; else cuBLAS
            xz = inproj_op(hidden, in_proj.weight, in_proj.bias, backend=backend)
        else:
            xz = in_proj(hidden)
        x, z = xz.chunk(2, dim=-1)  # [batch, length, d_inner] each
        u_f, u_b = conv_silu_bidir(x, self.conv1d.weight, self.conv1d.bias, self.conv1d_b.weight, self.conv1d_b.bias,
                                   backend=backend)
        weights = self._fused_proj_weights(u_f, u_b, backend)
        if weights is not None:  # both directions' x_proj and dt_proj in one kernel (inference)
            (delta_f, delta_b), (B_f, B_b), (C_f, C_b) = fused_scan_inputs(u_f, u_b, *weights, self.d_state)
        else:
            align = self._triton_scan(u_f.device)  # the Triton scan reads B / C
            delta_f, B_f, C_f = self.scan_inputs(u_f, False, align)
            delta_b, B_b, C_b = self.scan_inputs(u_b, True, align)

        def pair(f: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:  # [batch, length, c] -> the scan's [batch, c, length]
            return f.transpose(1, 2), b.transpose(1, 2)

        y2 = selective_scan_bidir(
            pair(u_f, u_b), pair(delta_f, delta_b), (self.A_log, self.A_b_log), pair(B_f, B_b), pair(C_f, C_b),
            (self.D, self.D_b), z.transpose(1, 2), delta_bias=(self.dt_proj.bias, self.dt_proj_b.bias),
            delta_softplus=True, scale=0.5 if self.divide_out else 1.0, backend=self.scan_backend, a_is_log=True,
        )  # [2, batch, d_inner, length]
        out_proj = self._modules["out_proj"]
        if type(out_proj) is nn.Linear and not (out_proj._forward_hooks or out_proj._forward_pre_hooks
                                                 or any(_GLOBAL_HOOKS)):
            # the directions' sum and out_proj in one kernel where it applies (inference), as a plan runs them
            out = sum_out_proj(y2, out_proj.weight, out_proj.bias, backend=backend)
        else:
            out = out_proj(sum_directions(y2))  # [batch, length, d_inner] -> d_model
        metric = None
        if export is not None:
            f, b = {"B": (B_f, B_b), "C": (C_f, C_b), "delta": (delta_f, delta_b)}[export]
            metric = (f + b) / 2
        return out, metric


class Block(nn.Module):
    """Add -> RMSNorm -> Mixer with the residual stream kept in float32.

    Input/output: (hidden, residual, state) where ``hidden`` is the previous mixer's raw output
    [batch, tokens, E], ``residual`` the float32 token representation (None before the first block), and
    ``state`` a :class:`TokenState`. ``export_metric`` (set by the merge patch, never changed in forward)
    makes the block hand the next merging block a B/C/delta metric.
    """

    export_metric: Optional[str] = None

    def __init__(self, dim: int, mixer: BiMambaMixer, drop_path: float = 0.0, norm_eps: float = 1e-5,
                 residual_in_fp32: bool = True, device=None, dtype=None):
        super().__init__()
        self.mixer = mixer
        self.norm = RMSNorm(dim, eps=norm_eps, device=device, dtype=dtype)
        self.drop_path = DropPath(drop_path)
        self.residual_in_fp32 = residual_in_fp32

    def add_norm_mix(self, hidden: Tensor, residual: Optional[Tensor], state: TokenState):
        if self.export_metric is None and self.residual_in_fp32 and self.drop_path.drop_prob == 0:
            mixer = self.mixer
            if torch.compiler.is_compiling():
                if mixer.traces_inference(hidden, self.norm, residual):  # traced: the block as one op
                    hidden, residual = block_inference(hidden, residual, self.norm.weight, self.norm.eps,
                                                       *mixer.plan_args())
                    return hidden, residual, state._replace(metric=None)
            else:
                # (a hook on the mixer must see its call: then the mixer is called as a module, below)
                prepared = None if mixer._hooked() else mixer.plan(hidden, self.norm, residual)
                if prepared is not None:  # inference: the norm and the mixer's launches prepared (ops.triton.mixer)
                    plan, tensors = prepared
                    residual, normed = plan.add_norm(hidden, residual, self.norm.weight, self.norm.eps)
                    return plan(normed, tensors), residual, state._replace(metric=None)
        residual, normed = drop_add_rms_norm(
            hidden, residual, self.norm.weight, self.norm.eps, self.drop_path.drop_prob, self.residual_in_fp32,
            backend=policy.op_backend(self.mixer.scan_backend),
        )
        hidden, metric = self.mixer(normed, export=self.export_metric)  # self.mix inlined: one call less per block
        return hidden, residual, state._replace(metric=metric)

    def mix(self, normed: Tensor, residual: Tensor, state: TokenState):
        """The mixer on the normalised tokens (the block's second half, after the residual add + norm)."""
        hidden, metric = self.mixer(normed, export=self.export_metric)
        return hidden, residual, state._replace(metric=metric)

    def forward(self, hidden: Tensor, residual: Optional[Tensor], state: TokenState):
        return self.add_norm_mix(hidden, residual, state)


class PatchEmbed(nn.Module):
    """Conv2d(in_chans, E, kernel=patch, stride=patch) -> [batch, num_patches, E] in row-major patch order."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 192,
                 device=None, dtype=None):
        super().__init__()
        self.img_size, self.patch_size = img_size, patch_size
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size, device=device, dtype=dtype)

    def check(self, x: Tensor) -> None:
        """Refuse an image of another size than the model's, in one line."""
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"input is {tuple(x.shape[-2:])} pixels but the model was built for {self.img_size}x{self.img_size}"
            )

    def forward(self, x: Tensor, backend: str = "auto") -> Tensor:
        """``backend``: of the patch cut-out (:func:`rmeeto.ops.embed.patch_rows`), "auto" or "torch"."""
        self.check(x)
        if x.is_cuda:
            # same arithmetic as the strided conv, as one GEMM over cut-out patches: cuDNN's choice for this
            # conv on Hopper in fp16 (implicit sgemm) took ~0.8 ms per 128 images, the GEMM a few dozen us
            patches = patch_rows(x, self.patch_size, backend)
            return F.linear(patches, self.proj.weight.reshape(self.proj.out_channels, -1), self.proj.bias)
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionMamba(nn.Module):
    """Vim with a class token (middle, as the official models, or first). Constructor arguments use the official
    names; what was built is described by ``model.arch`` (a :class:`~rmeeto.models.VimArch`).

    Surface (as timm models): ``forward_features(x) -> [batch, E]`` (the normalised class token),
    ``forward_head(features) -> logits``, ``forward(x) -> logits``, ``reset_classifier(num_classes)``,
    plus ``forward_tokens(x) -> (normalised tokens [batch, tokens, E], TokenState)``.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 192,
        depth: int = 24,
        d_state: int = 16,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_epsilon: float = 1e-5,
        residual_in_fp32: bool = True,
        if_divide_out: bool = True,
        scan_backend: str = "auto",
        device=None,
        dtype=None,
        expand: int = 2,
        d_conv: int = 4,
        dt_rank: Optional[int] = None,
        cls_position: str = "middle",
        init: str = "vim",
        **kwargs,
    ):
        super().__init__()
        # official constructor flags that select this exact architecture; anything else is a different model
        fixed = {
            "rms_norm": True, "fused_add_norm": True, "if_abs_pos_embed": True, "if_rope": False,
            "if_rope_residual": False, "bimamba_type": "v2", "if_cls_token": True, "use_middle_cls_token": True,
            "use_double_cls_token": False, "final_pool_type": "mean", "if_bidirectional": False, "stride": None,
            "if_devide_out": True,  # misspelled official alias of if_divide_out
        }
        for key, value in kwargs.items():
            if key not in fixed:
                raise TypeError(f"VisionMamba got an unexpected argument {key!r}")
            if key == "stride" and value in (None, patch_size):
                continue
            if key == "use_middle_cls_token":  # False: the class token goes first (read into arch below)
                continue
            if key != "final_pool_type" and value != fixed[key]:
                raise ValueError(f"{key}={value!r} selects a Vim variant rmeeto does not implement")
        if "use_middle_cls_token" in kwargs and cls_position == "middle":
            cls_position = "middle" if kwargs["use_middle_cls_token"] else "first"
        self.arch = VimArch(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
            embed_dim=embed_dim, depth=depth, d_state=d_state, expand=expand, d_conv=d_conv, dt_rank=dt_rank,
            cls_position=cls_position, divide_out=if_divide_out, init=init,
        )
        arch = self.arch
        if arch.cls_index is None:
            raise NotImplementedError("cls_position='none' (no class token, pooled head) is not implemented yet")
        kw = {"device": device, "dtype": dtype}
        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.depth = depth
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, **kw)
        self.num_patches = arch.num_patches
        self.num_tokens = arch.num_tokens
        self.cls_position = arch.cls_index  # int index, for callers that predate VimArch
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim, **kw))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, embed_dim, **kw))
        self.pos_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes, **kw) if num_classes > 0 else nn.Identity()

        # layers 0 and 1 get no drop path: layer i >= 1 uses dpr[i - 1] (official quirk)
        dpr = [0.0] + torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()  # (also under a meta device)
        mixer_kw = dict(d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank, divide_out=if_divide_out,
                        scan_backend=scan_backend, **kw)
        self.layers = nn.ModuleList(
            Block(
                embed_dim,
                BiMambaMixer(embed_dim, **mixer_kw),
                drop_path=dpr[i] if i > 0 else 0.0,
                norm_eps=norm_epsilon,
                residual_in_fp32=residual_in_fp32,
                **kw,
            )
            for i in range(depth)
        )
        self.norm_f = RMSNorm(embed_dim, eps=norm_epsilon, **kw)
        self.drop_path = DropPath(drop_path_rate)  # the final add uses the full rate (official quirk)
        for p in (self.cls_token, self.pos_embed):
            p._no_weight_decay = True
        self._init_weights()

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def _init_weights(self):
        if self.arch.init == "videomamba":
            return self._init_weights_videomamba()
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        w = self.patch_embed.proj.weight
        fan_in = w[0].numel()  # in_chans * patch area (* tubelet for a 3-D patch embedding)
        nn.init.trunc_normal_(w, std=math.sqrt(1.0 / fan_in) / 0.87962566103423978)  # lecun normal
        nn.init.zeros_(self.patch_embed.proj.bias)
        if isinstance(self.head, nn.Linear):
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        for layer in self.layers:
            m = layer.mixer
            for lin in (m.in_proj, m.x_proj, m.x_proj_b, m.out_proj):
                nn.init.kaiming_uniform_(lin.weight, a=math.sqrt(5))
            m.out_proj.weight /= math.sqrt(self.depth)
            nn.init.zeros_(m.dt_proj_b.bias)  # zeroed by the official global bias reset

    @torch.no_grad()
    def _init_weights_videomamba(self):
        """VideoMamba's init: every Linear (mixer projections, dt projections and head alike) trunc-normal 0.02
        with zero bias, so both dt biases start at 0; then out_proj kaiming-uniform / sqrt(depth); pos_embed
        trunc-normal 0.02; class token zero; patch embedding and convs keep PyTorch's default init."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.zeros_(self.cls_token)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for layer in self.layers:
            nn.init.kaiming_uniform_(layer.mixer.out_proj.weight, a=math.sqrt(5))
            layer.mixer.out_proj.weight /= math.sqrt(self.depth)

    @staticmethod
    def checkpoint_filter(state_dict, model: "VisionMamba") -> FilterResult:
        """The filter :func:`rmeeto.checkpoint.load_checkpoint` applies (see :func:`filter_state_dict`)."""
        return filter_state_dict(state_dict, model)

    def no_weight_decay(self) -> set[str]:
        """Names of parameters conventionally exempt from weight decay (A_log, D, cls, pos_embed)."""
        return {name for name, p in self.named_parameters() if getattr(p, "_no_weight_decay", False)}

    # ------------------------------------------------------------------ forward
    def embed(self, x: Tensor) -> Tensor:
        """[batch, C, H, W] -> [batch, num_patches + 1, E] with the class token at ``cls_position`` (the middle,
        as the official models, or first) and the position embedding added (on CUDA
        :func:`rmeeto.ops.embed.embed_tokens`: in inference one kernel, else the cut-out, the GEMM and the insert)."""
        backend = policy.op_backend(self.layers[0].mixer.scan_backend)
        if x.is_cuda:
            self.patch_embed.check(x)
            proj = self.patch_embed.proj
            tokens = embed_tokens(x, proj.weight, proj.bias, self.cls_token, self.pos_embed, self.cls_position,
                                  self.patch_embed.patch_size, backend)
        else:
            tokens = self.patch_embed(x, backend)
            tokens = insert_cls_add_pos(tokens, self.cls_token, self.pos_embed, self.cls_position, backend)
        return self.pos_drop(tokens) if self.training and self.pos_drop.p > 0 else tokens

    def forward_tokens(self, x: Tensor, track_source: bool = False) -> tuple[Tensor, TokenState]:
        hidden = self.embed(x)
        source = None
        if track_source:
            source = torch.eye(hidden.shape[1], device=hidden.device, dtype=hidden.dtype).expand(
                hidden.shape[0], -1, -1
            )
        residual: Optional[Tensor] = None
        state = TokenState(cls_index=self.cls_position, source=source)
        for layer in self.layers:
            hidden, residual, state = layer(hidden, residual, state)
        # residual_in_fp32=True whatever the blocks use: the norm computes in float32 either way
        _, out = drop_add_rms_norm(
            hidden, residual, self.norm_f.weight, self.norm_f.eps, self.drop_path.drop_prob, residual_in_fp32=True,
            backend=policy.op_backend(self.layers[0].mixer.scan_backend),
        )
        return out, state

    def forward_features(self, x: Tensor) -> Tensor:
        tokens, state = self.forward_tokens(x)
        return tokens[:, state.cls_index]

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        return features if pre_logits else self.head(features)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        w = self.head.weight if isinstance(self.head, nn.Linear) else self.cls_token
        self.head = nn.Linear(self.embed_dim, num_classes, device=w.device, dtype=w.dtype) if num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear):
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def set_scan_backend(self, backend: str) -> None:
        """Force the selective-scan backend of every mixer (``"auto"`` restores automatic choice). A pure-PyTorch
        backend ("reference", "chunked") also puts this model's conv, norm and merge on their PyTorch paths
        (see :mod:`rmeeto.ops.policy`)."""
        for layer in self.layers:
            layer.mixer.scan_backend = backend


# ============================================================================================ checkpoints
def resample_pos_embed(pos_embed: Tensor, grid_size: tuple[int, int], cls_position: str = "middle") -> Tensor:
    """Resize a position embedding with one class-token row to another patch grid.

    pos_embed: [1, N + 1, E] with N = g * g patches in row-major order and the class row at N // 2
    (``cls_position="middle"``) or 0 (``"first"``) -> [1, h * w + 1, E] with the class row (copied exactly) at
    the same kind of position and the patch rows resized bicubically (computed in float32, returned in the
    input dtype)."""
    if cls_position not in ("middle", "first"):
        raise ValueError(f"cls_position must be 'middle' or 'first' to resize a pos_embed, got {cls_position!r}")
    _, length, dim = pos_embed.shape
    num_patches = length - 1
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise CheckpointError(f"pos_embed has {num_patches} patch rows, not a square grid: cannot resize it")
    old_cls = num_patches // 2 if cls_position == "middle" else 0
    cls_row = pos_embed[:, old_cls : old_cls + 1]
    patches = torch.cat([pos_embed[:, :old_cls], pos_embed[:, old_cls + 1 :]], dim=1)
    patches = patches.reshape(1, side, side, dim).permute(0, 3, 1, 2).float()
    patches = F.interpolate(patches, size=tuple(grid_size), mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos_embed.dtype)
    new_cls = patches.shape[1] // 2 if cls_position == "middle" else 0
    return torch.cat([patches[:, :new_cls], cls_row, patches[:, new_cls:]], dim=1)


def filter_state_dict(state_dict: Mapping[str, Any], model: nn.Module) -> FilterResult:
    """:func:`rmeeto.checkpoint.plain_filter` (containers, prefixes), then the Vim adaptations: ``pos_embed``
    resized to the model's grid around its class token, ``head.*`` dropped when the class count differs or the
    model has no classifier. Returns what was loaded and changed, for :func:`rmeeto.checkpoint.load_checkpoint`."""
    model = unwrap_module(model)
    result = plain_filter(state_dict, model)
    out, notes = result.state_dict, result.notes
    own = model.state_dict()

    pos = out.get("pos_embed")
    if isinstance(pos, torch.Tensor) and "pos_embed" in own and pos.shape != own["pos_embed"].shape:
        want = own["pos_embed"].shape
        if pos.dim() != 3 or pos.shape[0] != 1:  # resizing assumes one [1, tokens, width] table
            raise CheckpointError(f"pos_embed has shape {tuple(pos.shape)}, the model expects {tuple(want)}: "
                                  "not a [1, tokens, width] position table")
        if pos.shape[-1] == want[-1] and hasattr(model, "patch_embed"):
            arch = getattr(model, "arch", None)
            cls_position = arch.cls_position if isinstance(arch, VimArch) else "middle"
            out["pos_embed"] = resample_pos_embed(pos, model.patch_embed.grid_size, cls_position)
            result.pos_embed_resized = (pos.shape[1], want[1])
            notes.append(f"pos_embed interpolated from {pos.shape[1]} to {want[1]} tokens")

    head_keys = [k for k in out if k.startswith("head.")]
    if head_keys:
        head = getattr(model, "head", None)
        if not isinstance(head, nn.Linear):
            for k in head_keys:
                del out[k]
            notes.append("classifier weights dropped: the model has no classifier head")
        elif "head.weight" in out and out["head.weight"].shape != head.weight.shape:
            ckpt_shape = tuple(out["head.weight"].shape)
            for k in head_keys:
                del out[k]
            result.head_reset = True
            result.skipped = tuple(k for k in own if k.startswith("head."))
            if len(ckpt_shape) == 2 and ckpt_shape[0] != head.out_features:
                why = f"checkpoint has {ckpt_shape[0]} classes, model has {head.out_features}"
            else:  # same class count: the input width (or the tensor's rank) is what differs
                why = (f"checkpoint head.weight has shape {ckpt_shape} (input width {ckpt_shape[-1]}), the "
                       f"model's is {tuple(head.weight.shape)} (width {head.in_features})")
            notes.append(f"classifier not loaded: {why}; head re-initialised")
    return result


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, Tensor]:
    """Map a checkpoint onto ``model`` (timm's ``pretrained_filter_fn`` contract; the input is not modified).

    Unwraps ``model`` / ``state_dict`` / ``model_ema`` containers, strips ``module.`` and ``_orig_mod.``
    prefixes, resizes ``pos_embed`` [1, N + 1, E] to the model's grid (see :func:`resample_pos_embed`) and drops
    ``head.*`` when the class count differs (the model keeps its own, freshly initialised head). Each change is
    announced with a ``UserWarning``."""
    result = filter_state_dict(state_dict, model)
    for note in result.notes:
        warnings.warn(note, stacklevel=2)
    return result.state_dict


# the facts a state dict shows, in the order ``rmeeto info`` reports them
_FACTS = ("embed_dim", "depth", "patch_size", "in_chans", "img_size", "num_classes", "num_tokens", "d_state")


def arch_facts(state_dict: Mapping[str, Any]) -> dict[str, Optional[int]]:
    """Architecture numbers read off a Vim state dict's tensor shapes (None where the key is absent).

    Keys: embed_dim, depth, patch_size, in_chans, img_size, num_classes (0 without ``head.weight``),
    num_tokens, d_state, then expand, d_conv, dt_rank, and num_frames / tubelet_size (None for an image model;
    read off VideoMamba's ``temporal_pos_embedding`` and 3-D patch kernel). Prefixes (``module.`` ...) are looked
    through. img_size assumes a square grid and one class token."""
    sd = {strip_prefixes(k): v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    facts: dict[str, Optional[int]] = dict.fromkeys(_FACTS + ("expand", "d_conv", "dt_rank", "num_frames",
                                                               "tubelet_size"))
    proj = sd.get("patch_embed.proj.weight")
    if proj is not None and proj.dim() in (4, 5):
        facts["embed_dim"], facts["in_chans"], facts["patch_size"] = proj.shape[0], proj.shape[1], proj.shape[-1]
    temporal = sd.get("temporal_pos_embedding")
    if temporal is not None and temporal.dim() == 3:
        facts["tubelet_size"] = proj.shape[2] if proj is not None and proj.dim() == 5 else 1
        facts["num_frames"] = temporal.shape[1] * facts["tubelet_size"]
    layers = {int(k.split(".")[1]) for k in sd if k.startswith("layers.") and k.split(".")[1].isdigit()}
    facts["depth"] = max(layers) + 1 if layers else None
    a_log = sd.get("layers.0.mixer.A_log")
    if a_log is not None and a_log.dim() == 2:
        facts["d_state"] = a_log.shape[1]
        if facts["embed_dim"]:
            facts["expand"] = a_log.shape[0] // facts["embed_dim"]
    conv = sd.get("layers.0.mixer.conv1d.weight")
    if conv is not None and conv.dim() == 3:
        facts["d_conv"] = conv.shape[-1]
    dt_proj = sd.get("layers.0.mixer.dt_proj.weight")
    if dt_proj is not None and dt_proj.dim() == 2:
        facts["dt_rank"] = dt_proj.shape[1]
    head = sd.get("head.weight")
    facts["num_classes"] = head.shape[0] if head is not None else 0
    pos = sd.get("pos_embed")
    if pos is not None and pos.dim() == 3:
        # a video model's pos_embed is per frame: class row + one frame's patches
        facts["num_tokens"] = 1 + (pos.shape[1] - 1) * (temporal.shape[1] if facts["num_frames"] else 1)
        side = math.isqrt(pos.shape[1] - 1)
        if side * side == pos.shape[1] - 1 and facts["patch_size"]:
            facts["img_size"] = side * facts["patch_size"]
    return facts


def arch_from_state_dict(state_dict: Mapping[str, Any], cls_position: Optional[str] = None,
                         divide_out: Optional[bool] = None, init: Optional[str] = None) -> VimArch:
    """The :class:`VimArch` of a Vim or VideoMamba state dict. The class-token position, the halving of the two
    directions and the init scheme leave no trace in the weights, so they are arguments; None means Vim's
    ("middle", True, "vim") for an image state dict and VideoMamba's ("first", False, "videomamba") for a video
    one. ValueError if a fact the shapes must show is missing."""
    facts = arch_facts(state_dict)
    video = facts["num_frames"] is not None
    family = ("first", False, "videomamba") if video else ("middle", True, "vim")
    cls_position, divide_out, init = (given if given is not None else default
                                      for given, default in zip((cls_position, divide_out, init), family))
    fields = ("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "d_state", "expand",
              "d_conv", "dt_rank")
    absent = [k for k in fields if facts[k] is None]
    if absent:
        raise ValueError(f"not a Vim state dict: cannot read {', '.join(absent)} from its tensors")
    if facts["dt_rank"] == math.ceil(facts["embed_dim"] / 16):
        facts["dt_rank"] = None  # the default rank, written as the registry writes it
    extra = {k: facts[k] for k in ("num_frames", "tubelet_size")} if video else {}
    return VimArch(**{k: facts[k] for k in fields}, **extra, cls_position=cls_position, divide_out=divide_out,
                   init=init)

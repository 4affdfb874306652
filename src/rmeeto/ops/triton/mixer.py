"""The bidirectional Mamba mixer's inference forward as a prepared sequence of launches: eager mode's host cost.

In inference a Vim mixer runs in_proj (cuBLAS), one conv launch for both directions, one launch for both
directions' x_proj and dt_proj, one scan launch for both, and the directions' sum with out_proj (one launch where
:mod:`rmeeto.ops.outproj` takes it: Vim-Ti / S widths; else an add and cuBLAS). Called
eagerly, the general path around the three Triton launches (the dispatchers' checks, pairing the directions'
layouts, the scan's B / C read mode, transposed views, the launch cache's key) re-derives on every call what
only the shapes decide (``benchmarks/host_profile_gpu.py``, results/s17/call1_host_profile.txt: of a Vim-Ti mixer
call's ~520 us under cProfile on the device host, the scan's dispatch took 169, the two GEMMs 60), and an eager
Vim-Ti forward was host-bound. With the plans a plain block makes 68 Python calls instead of 318
(``benchmarks/host_proxy_cpu.py --half``).

A :class:`MixerPlan` is made for one (input shape, strides and dtype; weights' addresses and dtypes; kernel
switches) by :meth:`rmeeto.models.vim.BiMambaMixer.plan`. It derives every launch's grid, scalar arguments
and constexprs once, from the same spec functions the general launchers call (:func:`rmeeto.ops.triton.conv.fwd_spec`,
:func:`rmeeto.ops.triton.proj.spec`, :func:`rmeeto.ops.triton.scan.fwd_bidir_spec`); a call then allocates the
same outputs and launches through :class:`rmeeto.ops.triton._launch.Launcher`. Same kernels, arguments and
output layouts as the general path: the same bits (tests/ops/test_interpreted.py, tests/ops/test_gpu_plan.py).

Tile tables (``scan.FWD_CONFIG``, ``proj.proj_config``, ``conv.FWD_CONFIG``, ...) are read when a plan makes its
launchers, on its first call. A benchmark that changes one afterwards must let the mixers make new plans: any
switch setter of :mod:`rmeeto.ops.policy` (e.g. ``policy.set_fused("plan", True)``) starts a new generation of
them.
"""

from __future__ import annotations

import operator
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from rmeeto.ops import policy as _policy
from rmeeto.ops import inproj as _inproj_op
from rmeeto.ops.triton import conv as _conv
from rmeeto.ops.triton import inproj as _inproj
from rmeeto.ops.triton import merge as _merge
from rmeeto.ops.triton import norm as _norm
from rmeeto.ops.triton import outproj as _outproj
from rmeeto.ops.triton import proj as _proj
from rmeeto.ops.triton import scan as _scan
from rmeeto.ops.triton import tma_gemm as _tma_gemm
from rmeeto.ops.triton._inductor import library_op
from rmeeto.ops.triton._launch import Launcher, direct_ready

Tensor = torch.Tensor

__all__ = ["MixerTensors", "MixerPlan", "PlanCache", "plan_problem", "weights_key", "mixer_inference",
           "block_inference", "merging_block_inference", "direct_layout", "direct_arguments"]


class MixerTensors(NamedTuple):
    """A mixer's weights in the order a plan takes them (biases of the Linear layers may be None)."""

    w_in: Tensor
    b_in: Optional[Tensor]
    conv_w: Tensor
    conv_b: Tensor
    conv_w_b: Tensor
    conv_b_b: Tensor
    x_proj: Tensor
    x_proj_b: Tensor
    dt_proj: Tensor
    dt_proj_b: Tensor
    dt_bias: Tensor
    dt_bias_b: Tensor
    A_log: Tensor
    A_b_log: Tensor
    D: Tensor
    D_b: Tensor
    w_out: Tensor
    b_out: Optional[Tensor]


class PlanCache(dict):
    """Prepared inference paths by input signature, at most ``limit`` (then every kept one is dropped): a mixer's
    or a merging block's (16: one per input shape, merged layers and batch sizes, more when weights moved), or the
    process's for the traced inference ops. Copies and pickles start empty (the plans hold compiled kernels, and
    are remade on first use)."""

    def __init__(self, limit: int = 16):
        super().__init__()
        self.limit = limit

    def put(self, key, plan):
        """Keep ``plan`` (None too: "the general path") for ``key``, dropping every kept one when full."""
        if len(self) >= self.limit:
            self.clear()
        self[key] = plan
        return plan

    def __deepcopy__(self, memo):
        return PlanCache(self.limit)

    def __copy__(self):
        return PlanCache(self.limit)

    def __reduce__(self):
        return (PlanCache, (self.limit,))


# a plan's key holds its weights' addresses and dtypes (a weight moved or cast: a new plan), read in C
_DATA_PTR = torch.Tensor.data_ptr
_DTYPE = operator.attrgetter("dtype")
_STRIDE = torch.Tensor.stride


def weights_key(tensors, strides: bool = False) -> tuple:
    """What a plan's cache key holds of its weights (a :class:`MixerTensors`, None for a missing bias): how many
    are present, their addresses and dtypes, and with ``strides`` their strides."""
    present = [t for t in tensors if t is not None]
    key = (len(present), tuple(map(_DATA_PTR, present)), tuple(map(_DTYPE, present)))
    return key + (tuple(map(_STRIDE, present)),) if strides else key


def _same_layout(a: Tensor, b: Tensor) -> bool:
    """The two directions' tensors as the bidirectional scan pairs them without a copy, on one device."""
    return a.device == b.device and _scan._same_layout(a, b)


def plan_problem(hidden: Tensor, t: MixerTensors, d_state: int) -> Optional[str]:
    """Why a plan cannot serve ``hidden`` with these weights (None: it can). What the general path would do
    differently then: make contiguous copies, or take another kernel or PyTorch op."""
    if hidden.dim() != 3 or hidden.numel() == 0:
        return "not a non-empty [batch, length, channels] input"
    if hidden.dtype not in (torch.float16, torch.bfloat16):
        return "not 16-bit"
    dt = hidden.dtype
    if any(w is not None and w.device != hidden.device for w in t):
        return "weights on another device"
    if any(w.dtype != dt for w in (t.w_in, t.w_out)) or any(
            b is not None and b.dtype != dt for b in (t.b_in, t.b_out)):
        return "in_proj / out_proj not in the input's dtype"
    if t.conv_w.shape[-1] > 4 or not (_same_layout(t.conv_w, t.conv_w_b) and _same_layout(t.conv_b, t.conv_b_b)):
        return "conv taps > 4 or the directions' conv weights differ in layout"
    if not all(w.is_contiguous() for w in (t.conv_w, t.conv_b)):
        return "conv weights not contiguous"
    if not (_same_layout(t.x_proj, t.x_proj_b) and _same_layout(t.dt_proj, t.dt_proj_b)
            and t.x_proj.stride(1) == 1 and t.dt_proj.stride(1) == 1):
        return "x_proj / dt_proj layouts"
    n2 = t.x_proj.shape[0] - t.dt_proj.shape[1]
    if n2 != 2 * d_state or n2 < 16 or n2 & (n2 - 1):
        return "B and C not a power-of-two width of at least 16"
    for f, b in ((t.A_log, t.A_b_log), (t.D, t.D_b), (t.dt_bias, t.dt_bias_b)):
        if not _same_layout(f, b):
            return "the directions' A / D / dt bias differ in layout"
    return None


class MixerPlan:
    """The inference forward of one mixer for inputs of one shape, layout and dtype:
    ``plan(hidden, tensors)`` = ``BiMambaMixer.forward(hidden)[0]`` bit for bit, ``tensors`` a
    :class:`MixerTensors` of the weights (those :func:`plan_problem` accepted, or others at the same addresses
    with the same dtypes). Holds no tensor: only the launches' fixed parts, made on the first call."""

    def __init__(self, d_inner: int, dt_rank: int, d_state: int, scale: float):
        self.d_inner, self.dt_rank, self.d_state, self.scale = d_inner, dt_rank, d_state, float(scale)
        # x_dbl's row (B's column, width), fixed for the plan: its launchers are specialised on it
        self.row = _proj.xdbl_row(dt_rank, 2 * d_state)
        self.conv = self.proj = self.scan = self.norm = self.out = self.inp = None
        self._layout = self._weights = None  # the direct path's workspace layout and weights' addresses

    def add_norm(self, hidden: Tensor, residual: Optional[Tensor], weight: Tensor, eps: float
                 ) -> tuple[Tensor, Tensor]:
        """The block's residual add + RMSNorm before this mixer, as :func:`rmeeto.ops.norm.drop_add_rms_norm`
        runs it in inference (no drop path, float32 residual): hidden [batch, length, C] contiguous, residual
        float32 contiguous of hidden's shape or None -> (residual_out float32, normed in hidden's dtype). Only
        for a plan made with the norm (:meth:`rmeeto.models.vim.BiMambaMixer.plan` with ``norm``)."""
        shape = hidden.shape
        C = shape[-1]
        N = hidden.numel() // C
        dev = hidden.device
        ro = torch.empty(shape, device=dev, dtype=torch.float32)
        y = torch.empty(shape, device=dev, dtype=hidden.dtype)
        rstd = torch.empty(N, device=dev, dtype=torch.float32)
        if self.norm is None:
            grid, tail, meta = _norm.fwd_spec(N, C, shape[1], float(eps), residual is not None)
            self.norm = Launcher(_norm._add_norm_fwd, grid, dev, tail, meta)
        self.norm(hidden, residual if residual is not None else hidden, rstd, weight, ro, y, rstd)
        return ro, y

    def __call__(self, hidden: Tensor, t: MixerTensors) -> Tensor:
        if self.inp is None:  # in_proj as TMA tiles where they apply (rmeeto.ops.inproj), else cuBLAS
            self.inp = False
            if hidden.is_contiguous() and _inproj_op.kernel_fits(hidden, t.w_in, t.b_in):
                n, k = t.w_in.shape
                self.inp = _tma_gemm.Gemm(hidden.numel() // k, n, k, hidden.device, _inproj.INPROJ_CONFIG)
        if self.inp and _tma_gemm.aligned(hidden):
            xz = torch.empty(*hidden.shape[:-1], t.w_in.shape[0], device=hidden.device, dtype=hidden.dtype)
            self.inp(hidden, None, t.w_in, xz)
        else:
            xz = F.linear(hidden, t.w_in, t.b_in)
        if self.out and direct_ready(self.conv, self.proj, self.scan, *self._out_launchers()):
            return self._call_direct(xz, t)
        x, z = xz.chunk(2, dim=-1)
        batch, length, di = x.shape
        dev, dt = hidden.device, xz.dtype
        u_f = torch.empty(batch, length, di, device=dev, dtype=dt)
        u_b = torch.empty(batch, length, di, device=dev, dtype=dt)
        if self.conv is None:
            grid, tail, meta = _conv.fwd_spec(x, u_f, t.conv_w.shape[-1])
            self.conv = Launcher(_conv._conv_silu_fwd, grid, dev, tail, meta)
        self.conv(x, t.conv_w, t.conv_b, t.conv_w_b, t.conv_b_b, u_f, u_b)

        R, N = self.dt_rank, self.d_state
        bo, width = self.row
        xdbl = torch.empty(2, batch, length, width, device=dev, dtype=dt)
        delta = torch.empty(2, batch, length, di, device=dev, dtype=dt)
        if self.proj is None:
            grid, tail, meta = _proj.spec(batch * length, di, R, 2 * N, t.x_proj.stride(0), t.dt_proj.stride(0),
                                          sms=_proj.hopper_sms(dev), bo=bo)
            self.proj = Launcher(_proj._bidir_proj_kernel, grid, dev, tail, meta)
        self.proj(u_f, u_b, t.x_proj, t.x_proj_b, t.dt_proj, t.dt_proj_b, xdbl, delta)

        _, B2, C2 = _proj.xdbl_parts(xdbl, R, N)
        B_f, B_b = B2.unbind(0)
        C_f, C_b = C2.unbind(0)
        d_f, d_b = delta.unbind(0)
        out = torch.empty(2, batch, length, di, device=dev, dtype=dt)  # the scan writes channels-last
        if self.scan is None:
            def cm(v):  # the scan's [batch, channels, length] view
                return v.transpose(-1, -2)
            grid, tail, meta = _scan.fwd_bidir_spec(cm(u_f), cm(d_f), t.A_log, cm(B_f), cm(C_f), cm(B_b), cm(C_b),
                                                    t.D, cm(z), t.dt_bias, cm(out), True, self.scale, True)
            self.scan = Launcher(_scan._scan_bidir_fwd_kernel, grid, dev, tail, meta)
        self.scan(u_f, u_b, d_f, d_b, t.A_log, t.A_b_log, B_f, B_b, C_f, C_b, t.D, t.D_b, z, t.dt_bias,
                  t.dt_bias_b, out)
        if self.out is None:  # the directions' sum and out_proj in one kernel where it fits (rmeeto.ops.outproj)
            M, N = batch * length, t.w_out.shape[0]
            kind = _policy.use_fused("outproj", out) and _outproj.kernel_for(dt, t.w_out, t.b_out, M, dev)
            if kind == "tiles":
                grid, tail, meta = _outproj.spec(M, N, di, out.stride(0), t.w_out.stride(0))
                self.out = Launcher(_outproj._sum_out_proj_kernel, grid, dev, tail, meta)
            elif kind == "tma":  # (out: a fresh allocation, both planes 16-byte aligned: di is a multiple of 8)
                self.out = _tma_gemm.Gemm(M, N, di, dev, _outproj.TMA_CONFIG, two_a=True)
            else:
                self.out = False
        if self.out:
            res = torch.empty(batch, length, t.w_out.shape[0], device=dev, dtype=dt)
            if type(self.out) is _tma_gemm.Gemm:
                self.out(out[0], out[1], t.w_out, res)
            else:
                self.out(out, t.w_out, res)
            return res
        y_f, y_b = out.unbind(0)
        return F.linear(torch.add(y_f, y_b), t.w_out, t.b_out)

    def _out_launchers(self) -> tuple:
        """The launchers of the directions' sum + out_proj (a TMA GEMM's: none, it takes tensors)."""
        return () if type(self.out) is _tma_gemm.Gemm else (self.out,)

    def _call_direct(self, xz: Tensor, t: MixerTensors) -> Tensor:
        """The rest of :meth:`__call__` after in_proj (``xz``) where every launch after it may go to Triton's C
        function directly (:func:`rmeeto.ops.triton._launch.direct_ready`): the same kernels with the same
        arguments, each tensor passed as its address. The activations between the kernels (conv outputs, x_proj
        / dt_proj outputs, the scan's output) are regions of one allocation, each starting on a 512-byte boundary
        as a fresh allocation of the caching allocator does (so every address has the 16-byte alignment the
        launchers were specialised on), and the views the general path takes of them (x and z of ``xz``, the
        directions' planes, B and C in the projection's output) are their addresses at the same offsets: one
        allocation and no view per call instead of five and five. The weights' addresses are read on the first
        such call: a plan serves weights at one set of addresses (its cache key holds them)."""
        batch, length, _ = xz.shape
        di, R, N = self.d_inner, self.dt_rank, self.d_state
        n = batch * length
        dev, dt = xz.device, xz.dtype
        es = xz.element_size()
        if self._layout is None:  # (a plan serves one input shape and dtype)
            self._layout = direct_layout(n, es, di, R, N, self.row)
        offsets, total = self._layout
        if self._weights is None:
            self._weights = tuple(w.data_ptr() for w in (
                t.conv_w, t.conv_b, t.conv_w_b, t.conv_b_b, t.x_proj, t.x_proj_b, t.dt_proj, t.dt_proj_b, t.A_log,
                t.A_b_log, t.D, t.D_b, t.dt_bias, t.dt_bias_b, t.w_out))
        ws = torch.empty(total, device=dev, dtype=torch.uint8)
        conv, proj, scan, out = direct_arguments(xz.data_ptr(), ws.data_ptr(), offsets, n, es, di, R, N,
                                                 self._weights, self.row)
        self.conv.raw(*conv)
        self.proj.raw(*proj)
        self.scan.raw(*scan)
        res = torch.empty(batch, length, t.w_out.shape[0], device=dev, dtype=dt)
        if type(self.out) is _tma_gemm.Gemm:
            y2 = ws[offsets[4]:offsets[4] + 2 * n * di * es].view(dt).view(2, batch, length, di)
            self.out(y2[0], y2[1], t.w_out, res)
        else:
            self.out.raw(out, self._weights[-1], res.data_ptr())
        return res


def direct_layout(n: int, es: int, di: int, R: int, N: int, row: Optional[tuple] = None) -> tuple[tuple, int]:
    """(byte offsets, total bytes) of the regions of :meth:`MixerPlan._call_direct`'s one allocation for ``n`` =
    batch x length tokens of ``es``-byte elements: the conv outputs u_f and u_b ([n, di] each), the x_proj /
    dt_proj output ([2, n, W], ``row`` = (B's column, W), default :func:`rmeeto.ops.triton.proj.xdbl_row`'s), delta
    ([2, n, di]) and the scan's output ([2, n, di]), each region starting on a 512-byte boundary (where the caching
    allocator starts every block)."""
    width = (row or _proj.xdbl_row(R, 2 * N))[1]
    sizes = [-(-elements * es // 512) * 512 for elements in (n * di, n * di, 2 * n * width, 2 * n * di, 2 * n * di)]
    offsets = [0]
    for size in sizes[:-1]:
        offsets.append(offsets[-1] + size)
    return tuple(offsets), sum(sizes)


def direct_arguments(xz: int, base: int, offsets: tuple, n: int, es: int, di: int, R: int, N: int,
                     weights: tuple, row: Optional[tuple] = None) -> tuple[tuple, tuple, tuple, int]:
    """The addresses :meth:`MixerPlan.__call__` hands the conv, projection and scan launchers (their positional
    tensors, in order) and the scan output's address, with in_proj's output at ``xz``, the regions of
    :func:`direct_layout` from ``base`` and the weights' addresses in :meth:`MixerPlan._call_direct`'s order: x
    and z the two halves of each xz row, B and C at their offsets in each direction's plane of the projection's
    output (``row``: as :func:`direct_layout` takes it), the second direction's plane of delta and of that output
    after the first."""
    o_uf, o_ub, o_xd, o_dl, o_out = offsets
    cw, cb, cwb, cbb, xp, xpb, dp, dpb, a, ab, d, db, bias, bias_b, _ = weights
    u_f, u_b, xdbl, delta, out = base + o_uf, base + o_ub, base + o_xd, base + o_dl, base + o_out
    bo, width = row or _proj.xdbl_row(R, 2 * N)
    plane = n * width * es
    B_f, C_f = xdbl + bo * es, xdbl + (bo + N) * es
    return ((xz, cw, cb, cwb, cbb, u_f, u_b), (u_f, u_b, xp, xpb, dp, dpb, xdbl, delta),
            (u_f, u_b, delta, delta + n * di * es, a, ab, B_f, B_f + plane, C_f, C_f + plane, d, db, xz + di * es,
             bias, bias_b, out), out)


# ------------------------------------------------------------------------------------ under torch.compile
# Traced by torch.compile, an inference block is one opaque custom op (rmeeto::block_inference: the residual add +
# norm and the mixer; a merging block: rmeeto::merging_block_inference, the merge before them): Inductor then
# launches the same kernels as eager mode, through a plan. One op per block, as each custom op call costs host
# time (its dispatch layers: 20-65 us on this project's CPU proxy, benchmarks/compile_host_proxy_cpu.py; ~92 us
# per call beyond eager's work on the H200 host, results/s19/call3_probe_c1_src.txt). Tracing the general path
# showed Inductor the GEMMs, two conv ops and the scan op, and it added its own kernels around them
# (results/s17/call5_bench_compile.json: merged Vim-S compiled at 0.73x of unmerged). The ops are plain
# torch.library.Library definitions (rmeeto.ops.triton._inductor.library_op), whose dispatch skips custom_op's
# Python layers. (Session 19's Library ops did not finish compiling within 85 s on PyTorch 2.11: the cause was
# Inductor's fallback log line, which _inductor now avoids for every op.)
# Plans here are kept per input and weight signature for the whole process, as a mixer keeps its own.
_OP_PLANS = PlanCache(256)  # a 24-layer model at a few batch sizes and merge schedules


def _op_plan(hidden: Tensor, t: MixerTensors, d_state: int, scale: float, norm_key=None) -> MixerPlan:
    key = (hidden.shape, hidden.stride(), hidden.dtype, hidden.device, _policy.generation(), d_state, scale,
           norm_key, weights_key(t, strides=True))
    plan = _OP_PLANS.get(key)
    if plan is None:
        problem = plan_problem(hidden, t, d_state)
        if problem is not None:  # the tracer checked it (rmeeto.models.vim): only a direct caller gets here
            raise ValueError(f"rmeeto::mixer_inference cannot run these inputs: {problem}")
        plan = _OP_PLANS.put(key, MixerPlan(t.dt_proj.shape[0], t.dt_proj.shape[1], d_state, scale))
    return plan


@library_op("mixer_inference")
def _mixer_op(hidden: Tensor, w_in: Tensor, b_in: Optional[Tensor], conv_w: Tensor, conv_b: Tensor,
              conv_w_b: Tensor, conv_b_b: Tensor, x_proj: Tensor, x_proj_b: Tensor, dt_proj: Tensor,
              dt_proj_b: Tensor, dt_bias: Tensor, dt_bias_b: Tensor, A_log: Tensor, A_b_log: Tensor, D: Tensor,
              D_b: Tensor, w_out: Tensor, b_out: Optional[Tensor], d_state: int, scale: float) -> Tensor:
    t = MixerTensors(w_in, b_in, conv_w, conv_b, conv_w_b, conv_b_b, x_proj, x_proj_b, dt_proj, dt_proj_b, dt_bias,
                     dt_bias_b, A_log, A_b_log, D, D_b, w_out, b_out)
    return _op_plan(hidden, t, d_state, scale)(hidden, t)


@torch.library.register_fake(_mixer_op)
def _(hidden, w_in, b_in, conv_w, conv_b, conv_w_b, conv_b_b, x_proj, x_proj_b, dt_proj, dt_proj_b, dt_bias,
      dt_bias_b, A_log, A_b_log, D, D_b, w_out, b_out, d_state, scale):
    return hidden.new_empty(*hidden.shape[:-1], w_out.shape[0])


@library_op("block_inference")
def _block_op(hidden: Tensor, residual: Optional[Tensor], norm_w: Tensor, eps: float, w_in: Tensor,
              b_in: Optional[Tensor], conv_w: Tensor, conv_b: Tensor, conv_w_b: Tensor, conv_b_b: Tensor,
              x_proj: Tensor, x_proj_b: Tensor, dt_proj: Tensor, dt_proj_b: Tensor, dt_bias: Tensor,
              dt_bias_b: Tensor, A_log: Tensor, A_b_log: Tensor, D: Tensor, D_b: Tensor, w_out: Tensor,
              b_out: Optional[Tensor], d_state: int, scale: float) -> tuple[Tensor, Tensor]:
    t = MixerTensors(w_in, b_in, conv_w, conv_b, conv_w_b, conv_b_b, x_proj, x_proj_b, dt_proj, dt_proj_b, dt_bias,
                     dt_bias_b, A_log, A_b_log, D, D_b, w_out, b_out)
    # the norm's launcher, made on the plan's first call, holds that call's specialization: key on what sets it
    plan = _op_plan(hidden, t, d_state, scale, (residual is None, eps, norm_w.data_ptr(), norm_w.dtype))
    ro, y = plan.add_norm(hidden, residual, norm_w, eps)
    return plan(y, t), ro


@torch.library.register_fake(_block_op)
def _(hidden, residual, norm_w, eps, w_in, b_in, conv_w, conv_b, conv_w_b, conv_b_b, x_proj, x_proj_b, dt_proj,
      dt_proj_b, dt_bias, dt_bias_b, A_log, A_b_log, D, D_b, w_out, b_out, d_state, scale):
    return (hidden.new_empty(*hidden.shape[:-1], w_out.shape[0]),
            hidden.new_empty(hidden.shape, dtype=torch.float32))


@library_op("merging_block_inference")
def _merging_block_op(hidden: Tensor, residual: Tensor, size: Optional[Tensor], cls_index: int, num_merged: int,
                      new_cls_index: int, ordered: bool, norm_w: Tensor, eps: float, w_in: Tensor,
                      b_in: Optional[Tensor], conv_w: Tensor, conv_b: Tensor, conv_w_b: Tensor, conv_b_b: Tensor,
                      x_proj: Tensor, x_proj_b: Tensor, dt_proj: Tensor, dt_proj_b: Tensor, dt_bias: Tensor,
                      dt_bias_b: Tensor, A_log: Tensor, A_b_log: Tensor, D: Tensor, D_b: Tensor, w_out: Tensor,
                      b_out: Optional[Tensor], d_state: int, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    # (no workspace given: one of the call's own, as Inductor's CUDA graphs need)
    ro, y, s = _merge._match_merge_add_norm(hidden, residual, size, hidden, cls_index, num_merged, new_cls_index,
                                            ordered, norm_w, eps)
    t = MixerTensors(w_in, b_in, conv_w, conv_b, conv_w_b, conv_b_b, x_proj, x_proj_b, dt_proj, dt_proj_b, dt_bias,
                     dt_bias_b, A_log, A_b_log, D, D_b, w_out, b_out)
    return _op_plan(y, t, d_state, scale)(y, t), ro, s


@torch.library.register_fake(_merging_block_op)
def _(hidden, residual, size, cls_index, num_merged, new_cls_index, ordered, norm_w, eps, w_in, b_in, conv_w, conv_b,
      conv_w_b, conv_b_b, x_proj, x_proj_b, dt_proj, dt_proj_b, dt_bias, dt_bias_b, A_log, A_b_log, D, D_b, w_out,
      b_out, d_state, scale):
    batch, L, C = hidden.shape
    n_out = L - num_merged
    f32 = dict(dtype=torch.float32)
    return (hidden.new_empty(batch, n_out, w_out.shape[0]), hidden.new_empty(batch, n_out, C, **f32),
            hidden.new_empty(batch, n_out, 1, **f32))


def mixer_inference(hidden: Tensor, tensors: MixerTensors, d_state: int, scale: float) -> Tensor:
    """A mixer's inference forward as the op ``rmeeto::mixer_inference`` (what torch.compile traces in place of
    the general path): ``MixerPlan(...)(hidden, tensors)``, the same launches and bits as eager mode's plan. For
    inputs :func:`plan_problem` accepts, with no gradient to flow (the op has no backward)."""
    return _mixer_op(hidden, *tensors, int(d_state), float(scale))


def block_inference(hidden: Tensor, residual: Optional[Tensor], norm_w: Tensor, eps: float, tensors: MixerTensors,
                    d_state: int, scale: float) -> tuple[Tensor, Tensor]:
    """A block's residual add + RMSNorm and mixer in inference as the op ``rmeeto::block_inference`` ->
    (mixer output, residual_out float32): :meth:`MixerPlan.add_norm` then the plan, as eager mode runs them.
    For what :func:`mixer_inference` takes, hidden contiguous, residual float32 contiguous or None."""
    return _block_op(hidden, residual, norm_w, float(eps), *tensors, int(d_state), float(scale))


def merging_block_inference(hidden: Tensor, residual: Tensor, size: Optional[Tensor], cls_index: int,
                            num_merged: int, new_cls_index: int, ordered: bool, norm_w: Tensor, eps: float,
                            tensors: MixerTensors, d_state: int, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """A merging block in inference as the op ``rmeeto::merging_block_inference`` -> (mixer output, residual_out
    float32, new sizes float32 [batch, L - r, 1]): the merge of both streams with ``hidden`` as the metric
    (cosine, best partner), the residual add and RMSNorm
    (:func:`rmeeto.ops.triton.merge.match_merge_add_norm`), then the mixer's plan, the launches eager mode runs.
    ``residual`` float32; for mixer inputs :func:`plan_problem` accepts; no gradient to flow."""
    return _merging_block_op(hidden, residual, size, int(cls_index), int(num_merged), int(new_cls_index),
                             bool(ordered), norm_w, float(eps), *tensors, int(d_state), float(scale))

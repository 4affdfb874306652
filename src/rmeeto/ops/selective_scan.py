"""Selective scan (the S6 recurrence of Mamba) with interchangeable implementations.

All implementations share one signature, the one of ``mamba_ssm``'s ``selective_scan_fn`` plus ``reverse``:

    out = selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                         delta_softplus=False, reverse=False, backend="auto")

    u, delta, z : [batch, dim, length]   (any float dtype; ``delta`` is the pre-bias, pre-softplus value)
    A           : [dim, dstate]          (float32, negative real)
    B, C        : [batch, dstate, length] (shared across channels)
    D, delta_bias : [dim]                (float32)
    out         : [batch, dim, length]   in the dtype of ``u``

For every channel d and state n, with h = 0 before the first step, the scan computes

    dt      = softplus(delta[t] + delta_bias)             (softplus only if ``delta_softplus``)
    h[n]    = exp(dt * A[d, n]) * h[n] + dt * B[n, t] * u[t]
    y[t]    = sum_n C[n, t] * h[n] + D[d] * u[t]
    out[t]  = y[t] * silu(z[t])                           (gate only if ``z`` is given)

and with ``reverse=True`` the same recurrence runs from t = length-1 down to 0 (equivalently: flip every
time-indexed input, scan, flip the output back). State and arithmetic are float32 whatever the input dtype.

:func:`selective_scan_bidir` runs a bidirectional mixer's two scans (own inputs per direction, one shared z)
at once: one kernel launch on the Triton backend, two scans elsewhere.

Backends are chosen in one place, :func:`resolve_backend`:

* ``"reference"``: a sequential loop over time. Slow and obviously right; the ground truth for tests.
* ``"chunked"``: exact chunked form in pure PyTorch (a few dozen large ops instead of one per step);
  the default on CPU and wherever no fused kernel is available.
* ``"triton"``: the fused GPU kernel (forward and backward), when Triton and CUDA are available.
* ``"mamba_ssm"``: the official CUDA kernel, only if the ``mamba_ssm`` package is installed.

``"auto"`` picks ``triton`` where the kernel policy (:mod:`rmeeto.ops.policy`) allows the fused scan (CUDA
tensors, Triton importable), else ``chunked``. The process default and ``RMEETO_SCAN_BACKEND`` live there too.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from rmeeto.ops import policy
from rmeeto.ops._checks import check_scan_shapes

try:  # optional: the kernel module imports without Triton too, but a broken install must not break the rest
    from rmeeto.ops.triton import scan as _triton_scan
except Exception:  # pragma: no cover - depends on the install
    _triton_scan = None

Tensor = torch.Tensor

__all__ = [
    "selective_scan",
    "selective_scan_ref",
    "selective_scan_bidir",
    "selective_scan_bidir_ref",
    "sum_directions",
    "selective_scan_chunked",
    "available_backends",
    "resolve_backend",
    "register_backend",
    "set_default_backend",
    "BACKENDS",
]


def _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """Common float32 preprocessing: returns (u, dt, A, B, C) in float32 with dt discretised."""
    dt = delta.float()
    if delta_bias is not None:
        dt = dt + delta_bias.float()[None, :, None]
    if delta_softplus:
        dt = F.softplus(dt)
    return u.float(), dt, A.float(), B.float(), C.float()


def _finish(y: Tensor, u: Tensor, D: Optional[Tensor], z: Optional[Tensor], out_dtype) -> Tensor:
    if D is not None:
        y = y + D.float()[None, :, None] * u.float()
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(out_dtype)


def _flip_time(*tensors):
    return tuple(None if t is None else t.flip(-1) for t in tensors)


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, reverse=False):
    """Sequential reference: one step per token. See the module docstring for shapes."""
    if reverse:
        u, delta, B, C, z = _flip_time(u, delta, B, C, z)
    out_dtype = u.dtype
    uf, dt, Af, Bf, Cf = _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    batch, dim, length = uf.shape
    h = uf.new_zeros(batch, dim, Af.shape[1])
    ys = []
    for t in range(length):
        dA = torch.exp(dt[:, :, t, None] * Af)  # [batch, dim, dstate]
        dBu = dt[:, :, t, None] * Bf[:, None, :, t] * uf[:, :, t, None]
        h = dA * h + dBu
        ys.append((h * Cf[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else uf.new_zeros(batch, dim, 0)
    out = _finish(y, u, D, z, out_dtype)
    return out.flip(-1) if reverse else out


def _auto_chunk(batch: int, dim: int, dstate: int) -> int:
    # Keep one chunk of dA (chunk * batch * dim * dstate floats) near 1 MiB so it stays in cache: past that the
    # precomputation is memory-bound and loses to the per-step reference (measured on 2 x86 cores).
    per_step = max(1, batch * dim * dstate)
    chunk = 32
    while chunk > 2 and chunk * per_step > 256 * 1024:
        chunk //= 2
    return chunk


def _discretise(u: Tensor, dt: Tensor, A: Tensor, B: Tensor, sl: slice) -> tuple[Tensor, Tensor]:
    """dA = exp(dt * A) and dBu = dt * u * B for the time steps ``sl``, time-major: [T, batch, dim, dstate]."""
    dt_t = dt[..., sl].permute(2, 0, 1).unsqueeze(-1)
    dA = torch.exp(dt_t * A)
    dBu = (dt_t * u[..., sl].permute(2, 0, 1).unsqueeze(-1)) * B[..., sl].permute(2, 0, 1).unsqueeze(2)
    return dA, dBu


def _scan_steps(dA: Tensor, dBu: Tensor, h: Tensor, out: Tensor) -> Tensor:
    """h[t] = dA[t] * h[t-1] + dBu[t], written into ``out`` [T, b, d, n]: one fused op per step. Returns h[T-1]."""
    for t in range(dA.shape[0]):
        h = torch.addcmul(dBu[t], dA[t], h, out=out[t])
    return h


def _contract_C(H: Tensor, C: Tensor) -> Tensor:
    """y[b, d, t] = sum_n H[t, b, d, n] C[b, n, t]; H time-major [T, b, d, n], C [b, n, T]."""
    return torch.matmul(H, C.permute(2, 0, 1).unsqueeze(-1)).squeeze(-1).permute(1, 2, 0)  # batched mat-vec


class _ScanCore(torch.autograd.Function):
    """y[b, d, t] = sum_n C[b, n, t] h[t, b, d, n] with the recurrence of :func:`_scan_steps`, float32.

    Inputs u, dt [batch, dim, L] (dt already discretised), A [dim, n], B, C [batch, n, L]. The backward runs the
    adjoint recurrence dh[t] = C[t] dy[t] + dA[t+1] * dh[t+1] (again one fused op per step). Both directions
    work in cache-sized time chunks (the full-length tensors are memory-bound on a CPU); only dA and the
    states are kept between them (2 * L * batch * dim * dstate floats).
    """

    @staticmethod
    def forward(ctx, u, dt, A, B, C, chunk):
        batch, dim, length = u.shape
        dA_all = u.new_empty(length, batch, dim, A.shape[1])
        H = torch.empty_like(dA_all)
        h = u.new_zeros(batch, dim, A.shape[1])
        for start in range(0, length, chunk):
            sl = slice(start, start + chunk)
            dA, dBu = _discretise(u, dt, A, B, sl)
            dA_all[sl] = dA
            h = _scan_steps(dA, dBu, h, H[sl])
        ctx.save_for_backward(u, dt, A, B, C, dA_all, H)
        ctx.chunk = chunk
        return _contract_C(H, C)

    @staticmethod
    def backward(ctx, dy):
        u, dt, A, B, C, dA_all, H = ctx.saved_tensors
        length = u.shape[-1]
        chunk = ctx.chunk
        du, ddt, dB, dC = torch.empty_like(u), torch.empty_like(dt), torch.empty_like(B), torch.empty_like(C)
        dA_param = torch.zeros_like(A)
        g = torch.zeros_like(H[0])  # adjoint state dL/dh entering from the future
        dA_next = torch.zeros_like(H[0])  # dA of the step after the chunk (none after the last)
        starts = list(range(0, length, chunk))
        for start in reversed(starts):
            sl = slice(start, min(start + chunk, length))
            T = sl.stop - start
            dy_t = dy[..., sl].permute(2, 0, 1).unsqueeze(-1)  # [T, b, d, 1]
            G = dy_t * C[..., sl].permute(2, 0, 1).unsqueeze(2)  # [T, b, d, n]
            dA = dA_all[sl]
            for t in range(T - 1, -1, -1):
                g = torch.addcmul(G[t], dA[t + 1] if t + 1 < T else dA_next, g, out=G[t])  # G becomes dH
            dA_next = dA[0]
            dH = G
            H_prev = H[start - 1 : sl.stop - 1] if start > 0 else torch.cat([torch.zeros_like(H[:1]), H[: T - 1]])
            dlog = dH * H_prev * dA  # gradient w.r.t. dt * A
            dt_t, u_t = dt[..., sl].permute(2, 0, 1).unsqueeze(-1), u[..., sl].permute(2, 0, 1).unsqueeze(-1)
            dHB = (dH * B[..., sl].permute(2, 0, 1).unsqueeze(2)).sum(-1, keepdim=True)  # [T, b, d, 1]
            ddt[..., sl] = ((dlog * A).sum(-1, keepdim=True) + dHB * u_t).squeeze(-1).permute(1, 2, 0)
            du[..., sl] = (dHB * dt_t).squeeze(-1).permute(1, 2, 0)
            dA_param += (dlog * dt_t).sum((0, 1))
            dB[..., sl] = (dH * (dt_t * u_t)).sum(2).permute(1, 2, 0)
            dC[..., sl] = (H[sl] * dy_t).sum(2).permute(1, 2, 0)
        return du, ddt, dA_param, dB, dC, None


def _scan_core_nograd(u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int) -> Tensor:
    """Inference version of :class:`_ScanCore`: time chunks sized for the cache, nothing kept."""
    batch, dim, length = u.shape
    h = u.new_zeros(batch, dim, A.shape[1])
    buf = u.new_empty(min(chunk_size, max(length, 1)), batch, dim, A.shape[1])
    ys = []
    for start in range(0, length, chunk_size):
        sl = slice(start, start + chunk_size)
        dA, dBu = _discretise(u, dt, A, B, sl)
        H = buf[: dA.shape[0]]
        h = _scan_steps(dA, dBu, h, H)
        ys.append(_contract_C(H, C[..., sl]))
    return torch.cat(ys, dim=-1) if ys else u.new_zeros(batch, dim, 0)


def selective_scan_chunked(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, reverse=False, chunk_size=None
):
    """Vectorised scan (the default off-GPU): all elementwise work is done in a few large time-major ops
    ([length, batch, dim, dstate]), leaving ONE fused multiply-add per step (``h = dA[t] * h + dBu[t]``) and
    one per step of the hand-written backward. Without gradients, time is processed in cache-sized chunks and
    nothing is kept; with gradients the states are kept for the backward (L * batch * dim * dstate floats).
    Exact (the reference's arithmetic in another order), differentiable in every input.
    """
    if reverse:
        u, delta, B, C, z = _flip_time(u, delta, B, C, z)
    out_dtype = u.dtype
    uf, dt, Af, Bf, Cf = _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    chunk_size = chunk_size or _auto_chunk(uf.shape[0], uf.shape[1], Af.shape[1])
    if torch.is_grad_enabled() and any(t.requires_grad for t in (uf, dt, Af, Bf, Cf)):
        y = _ScanCore.apply(uf, dt, Af, Bf, Cf, chunk_size)
    else:
        y = _scan_core_nograd(uf, dt, Af, Bf, Cf, chunk_size)
    out = _finish(y, u, D, z, out_dtype)
    return out.flip(-1) if reverse else out


# ----------------------------------------------------------------------------------------- dispatch
ScanFn = Callable[..., Tensor]
BACKENDS: dict[str, Callable[[], Optional[ScanFn]]] = {}


def register_backend(name: str, loader: Callable[[], Optional[ScanFn]]) -> None:
    """Register a backend. ``loader()`` returns the function, or None when it cannot run here."""
    BACKENDS[name] = loader


def _load_triton() -> Optional[ScanFn]:
    if _triton_scan is None or not _triton_scan.is_available():
        return None
    return _triton_scan.selective_scan_triton


def _load_mamba_ssm() -> Optional[ScanFn]:
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:
        return None

    def fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, reverse=False):
        if reverse:
            u, delta, B, C, z = _flip_time(u, delta, B, C, z)
        out = selective_scan_fn(
            u.contiguous(), delta.contiguous(), A, B.contiguous(), C.contiguous(), D,
            None if z is None else z.contiguous(), delta_bias, delta_softplus,
        )
        return out.flip(-1) if reverse else out

    return fn


register_backend("reference", lambda: selective_scan_ref)
register_backend("chunked", lambda: selective_scan_chunked)
register_backend("triton", _load_triton)
register_backend("mamba_ssm", _load_mamba_ssm)

_loaded: dict[str, Optional[ScanFn]] = {}


def _get(name: str) -> Optional[ScanFn]:
    if torch.compiler.is_compiling():
        # the cache neither read nor written while torch.compile traces: dynamo guards on what a trace reads of
        # ``_loaded``, and once it changed (filled by this trace or by any eager call after it) the next call
        # would compile the model again
        return BACKENDS[name]()
    if name not in _loaded:
        _loaded[name] = BACKENDS[name]()
    return _loaded[name]


def available_backends(device: str | torch.device = "cpu") -> list[str]:
    """Names of the backends that can run on ``device`` here."""
    device = torch.device(device)
    names = []
    for name in BACKENDS:
        if name in ("triton", "mamba_ssm") and device.type != "cuda":
            continue
        if _get(name) is not None:
            names.append(name)
    return names


def set_default_backend(name: str) -> None:
    """Force a backend globally (``"auto"`` restores automatic choice); the process default of the kernel
    policy (:func:`rmeeto.ops.policy.set_scan_backend`, also set by RMEETO_SCAN_BACKEND)."""
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"unknown scan backend {name!r}; choose from {['auto', *BACKENDS]}")
    policy.set_scan_backend(name)


def resolve_backend(backend: str, device: torch.device) -> str:
    """The single decision point: map ``backend`` (maybe ``"auto"``) to a concrete backend name for ``device``."""
    backend = policy.scan_backend(backend)
    if backend == "auto":
        if policy.use_fused("scan", device) and _get("triton") is not None:
            return "triton"
        return "chunked"
    if backend not in BACKENDS:
        raise ValueError(f"unknown scan backend {backend!r}; choose from {['auto', *BACKENDS]}")
    if _get(backend) is None:
        raise RuntimeError(
            f"scan backend {backend!r} is not available here"
            + (" (install mamba-ssm to use it)" if backend == "mamba_ssm" else "")
            + (" (needs triton and a CUDA device)" if backend == "triton" else "")
        )
    return backend


def selective_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, reverse=False, backend="auto",
    a_is_log=False,
):
    """Run the selective scan with the chosen backend. Shapes: see the module docstring. ``a_is_log=True``:
    ``A`` holds A_log and A = -exp(A_log) (float32) is meant; the Triton kernels form it themselves, the other
    backends get it computed here. Likewise the Triton kernels read D / delta_bias in any float dtype, the
    other backends get float32 copies. (Both save small cast / exp kernels per call on the GPU path.)"""
    check_scan_shapes(u, delta, A, B, C, D, z, delta_bias)
    name = resolve_backend(backend, u.device)
    fn = _get(name)
    if name == "triton":  # shapes are checked: the kernel's unchecked entry (host time matters per call)
        return _triton_scan._selective_scan(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus),
                                            bool(reverse), bool(a_is_log))
    if a_is_log:
        A = -torch.exp(A.float())
    D = D.float() if D is not None else None
    delta_bias = delta_bias.float() if delta_bias is not None else None
    return fn(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus, reverse=reverse)


# ------------------------------------------------------------------------------------ both directions
def _directions(name: str, pair):
    """A (forward, backward) pair of one input; None stays None for both."""
    if pair is None:
        return None, None
    if len(pair) != 2:
        raise ValueError(f"selective_scan_bidir: {name} must be a pair (forward, backward), got {len(pair)} items")
    return pair[0], pair[1]


def selective_scan_bidir_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, scale=1.0,
                             scan: ScanFn = selective_scan_ref):
    """Reference of :func:`selective_scan_bidir`: two single-direction scans by ``scan`` (a function of the
    common signature, by default the sequential reference), stacked and multiplied by ``scale``."""
    D, delta_bias = _directions("D", D), _directions("delta_bias", delta_bias)
    ys = [scan(u[r], delta[r], A[r], B[r], C[r], D[r], z, delta_bias[r], delta_softplus, reverse=bool(r))
          for r in (0, 1)]
    # stacked channels-last when the scans come back that way, so y2[r].transpose(1, 2) stays contiguous
    y2 = torch.stack([y.transpose(1, 2) for y in ys]).transpose(2, 3)
    return y2 if scale == 1.0 else y2 * scale


def selective_scan_bidir(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, scale=1.0, backend="auto",
    a_is_log=False,
):
    """Both directions of a bidirectional mixer's scan at once:

        y2[0] = scale * selective_scan(u[0], delta[0], A[0], B[0], C[0], D[0], z, delta_bias[0], reverse=False)
        y2[1] = scale * selective_scan(u[1], delta[1], A[1], B[1], C[1], D[1], z, delta_bias[1], reverse=True)

    u, delta, A, B, C, D, delta_bias: pairs (forward direction's tensor, backward direction's tensor), each
    shaped as in the module docstring (D / delta_bias may be None for both); z [batch, dim, length] is shared.
    Returns y2 [2, batch, dim, length] in u's dtype. ``scale`` multiplies in float32 before the rounding to
    u's dtype on the Triton path (after it elsewhere; the same bits for a power of two, outside fp16's
    subnormal range), so ``y2.sum(0)`` with scale 0.5 is ``(y_f + y_b) / 2`` of the two single scans.

    The Triton backend runs both directions in one kernel launch (and their backward in one more); every
    other backend runs :func:`selective_scan` twice (:func:`selective_scan_bidir_ref`). ``backend`` and
    ``a_is_log`` as in :func:`selective_scan`."""
    pairs = [_directions(name, t) for name, t in
             (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("delta_bias", delta_bias))]
    u, delta, A, B, C, D, delta_bias = pairs
    for r in (0, 1):
        check_scan_shapes(u[r], delta[r], A[r], B[r], C[r], D[r], z, delta_bias[r])
    name = resolve_backend(backend, u[0].device)
    if name == "triton":  # shapes are checked: the kernel's unchecked entry, as selective_scan does
        return _triton_scan._selective_scan_bidir(u, delta, A, B, C, D, z, delta_bias, delta_softplus, scale,
                                                  a_is_log)

    def scan(*args, reverse):
        return selective_scan(*args, reverse=reverse, backend=name, a_is_log=a_is_log)

    return selective_scan_bidir_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, scale, scan=scan)


def _add_directions(y2: Tensor) -> Tensor:
    return torch.add(y2[0].transpose(1, 2), y2[1].transpose(1, 2))


class _SumDirections(torch.autograd.Function):
    """y2 [2, batch, dim, L] -> y2[0] + y2[1] as [batch, L, dim]; the backward broadcasts (no kernel)."""

    @staticmethod
    def forward(ctx, y2: Tensor) -> Tensor:
        return _add_directions(y2)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad.transpose(1, 2).unsqueeze(0).expand(2, -1, -1, -1)


def sum_directions(y2: Tensor) -> Tensor:
    """The two directions of :func:`selective_scan_bidir`'s output added: y2 [2, batch, dim, L] -> y[0] + y[1]
    as [batch, L, dim] (the mixer's token-major layout; contiguous when y2 is stored channels-last, as the
    Triton backend returns it), rounded once, the bits of ``y2.transpose(2, 3).sum(0)``.

    One elementwise add of the two planes, with or without a gradient. The same sum as a reduction over the
    strided direction axis took twice the time (a Vim-S forward on an H200: 8% of its GPU time), and under
    CUDA autocast a ``sum`` runs in float32 (a strided copy to float32 and casts back, forward and backward:
    the merged Vim-S training step went from 1,454 to 1,538 img/s without them). ``y2[0] + y2[1]`` under
    autograd would cost two zero-fills and two copies in the backward; here the backward is the broadcast of
    the incoming gradient to both directions, a stride-0 view the scan's backward reads as it is."""
    if y2.dim() != 4 or y2.shape[0] != 2:
        raise ValueError(f"sum_directions: y2 must be [2, batch, dim, L], got {tuple(y2.shape)}")
    if y2.requires_grad and torch.is_grad_enabled():
        return _SumDirections.apply(y2)
    return _add_directions(y2)

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

Backends are chosen in one place, :func:`resolve_backend`:

* ``"reference"``: a sequential loop over time. Slow and obviously right; the ground truth for tests.
* ``"chunked"``: exact chunked form in pure PyTorch (a few dozen large ops instead of one per step);
  the default on CPU and wherever no fused kernel is available.
* ``"triton"``: the fused GPU kernel (forward and backward), when Triton and CUDA are available.
* ``"mamba_ssm"``: the official CUDA kernel, only if the ``mamba_ssm`` package is installed.

``"auto"`` picks ``triton`` for CUDA tensors when it is importable, else ``chunked``.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

__all__ = [
    "selective_scan",
    "selective_scan_ref",
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


def _check_shapes(u, delta, A, B, C, D, z, delta_bias):
    if u.dim() != 3:
        raise ValueError(f"u must be [batch, dim, length], got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta shape {tuple(delta.shape)} != u shape {tuple(u.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be [dim={dim}, dstate], got {tuple(A.shape)}")
    dstate = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.shape != (batch, dstate, length):
            raise ValueError(f"{name} must be [batch, dstate, length] = {(batch, dstate, length)}, got {tuple(t.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z shape {tuple(z.shape)} != u shape {tuple(u.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (dim,):
            raise ValueError(f"{name} must be [dim={dim}], got {tuple(t.shape)}")


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


def selective_scan_chunked(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, reverse=False, chunk_size=None
):
    """Chunked scan: the elementwise work of ``chunk_size`` steps is done in a few large ops, leaving one fused
    multiply-add (``h = dA[t] * h + dBu[t]``) and one small matmul (``C[t] . h``) per step.

    Time-major layout ``[length, batch, dim, dstate]`` makes each step's slice contiguous, and ``unbind``
    gives autograd one node per chunk instead of one slice-gradient per step. Chunking bounds the memory of
    the discretised ``dA``/``dBu`` to ``chunk_size * batch * dim * dstate`` floats. Exact (same arithmetic as
    the reference, different op order), differentiable, and the default on CPU.
    """
    if reverse:
        u, delta, B, C, z = _flip_time(u, delta, B, C, z)
    out_dtype = u.dtype
    uf, dt, Af, Bf, Cf = _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    batch, dim, length = uf.shape
    dt_t = dt.permute(2, 0, 1).unsqueeze(-1)  # [L, b, d, 1]
    dtu_t = dt_t * uf.permute(2, 0, 1).unsqueeze(-1)  # [L, b, d, 1]
    B_t = Bf.permute(2, 0, 1).unsqueeze(2)  # [L, b, 1, n]
    C_t = Cf.permute(2, 0, 1).unsqueeze(-1)  # [L, b, n, 1]
    h = uf.new_zeros(batch, dim, Af.shape[1])
    chunk_size = chunk_size or _auto_chunk(batch, dim, Af.shape[1])
    ys = []
    for start in range(0, length, chunk_size):
        sl = slice(start, start + chunk_size)
        dA = torch.exp(dt_t[sl] * Af)  # [T, b, d, n]
        dBu = dtu_t[sl] * B_t[sl]  # [T, b, d, n]
        for a_t, b_t, c_t in zip(dA.unbind(0), dBu.unbind(0), C_t[sl].unbind(0)):
            h = torch.addcmul(b_t, a_t, h)
            ys.append(torch.bmm(h, c_t))  # [b, d, 1]
    y = torch.cat(ys, dim=-1) if ys else uf.new_zeros(batch, dim, 0)
    out = _finish(y, u, D, z, out_dtype)
    return out.flip(-1) if reverse else out


# ----------------------------------------------------------------------------------------- dispatch
ScanFn = Callable[..., Tensor]
BACKENDS: dict[str, Callable[[], Optional[ScanFn]]] = {}
_default_backend = os.environ.get("RMEETO_SCAN_BACKEND", "auto")


def register_backend(name: str, loader: Callable[[], Optional[ScanFn]]) -> None:
    """Register a backend. ``loader()`` returns the function, or None when it cannot run here."""
    BACKENDS[name] = loader


def _load_triton() -> Optional[ScanFn]:
    try:
        from rmeeto.ops import triton_scan  # noqa: F401  (optional module; needs triton + CUDA)
    except Exception:  # ImportError, or Triton present but broken
        return None
    return triton_scan.selective_scan_triton if triton_scan.is_available() else None


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
    """Force a backend globally (``"auto"`` restores automatic choice). Also settable by RMEETO_SCAN_BACKEND."""
    global _default_backend
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"unknown scan backend {name!r}; choose from {['auto', *BACKENDS]}")
    _default_backend = name


def resolve_backend(backend: str, device: torch.device) -> str:
    """The single decision point: map ``backend`` (maybe ``"auto"``) to a concrete backend name for ``device``."""
    if backend == "auto":
        backend = _default_backend
    if backend == "auto":
        if device.type == "cuda" and _get("triton") is not None:
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
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, reverse=False, backend="auto"
):
    """Run the selective scan with the chosen backend. Shapes: see the module docstring."""
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    fn = _get(resolve_backend(backend, u.device))
    return fn(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus, reverse=reverse)

"""Kernel policy: the one place that decides between the fused Triton kernels and the PyTorch references.

Ops ask :func:`use_fused` ("use the fused kernel of ``op`` for this tensor?") and the scan asks
:func:`scan_backend` for its default backend; nothing else reads the environment for kernel choices.

Environment switches, read ONCE when this module is imported:

==========================  ===========================================================================
``RMEETO_SCAN_BACKEND=x``   default selective-scan backend (``auto``, ``reference``, ``chunked``, ``triton``,
                            ``mamba_ssm``; default ``auto``: the Triton kernel for CUDA tensors, else chunked)
``RMEETO_FUSED_CONV=0``     depthwise conv + SiLU in PyTorch (``rmeeto.ops.conv``)
``RMEETO_FUSED_NORM=0``     residual add + drop path + RMSNorm in PyTorch (``rmeeto.ops.norm``)
``RMEETO_FUSED_MERGE=0``    token matching and merging in PyTorch (``rmeeto.merge``)
``RMEETO_FUSED_EMBED=0``   the token embedding's patch cut-out, class-token insert and position add in
                            PyTorch (``rmeeto.ops.embed``; the fused kernels only copy and round once: same
                            results)
``RMEETO_FUSED_EMBED_GEMM=0`` in inference, the patch embedding as the embed kernels' cut-out, a cuBLAS GEMM and
                            the class-token insert instead of one kernel reading the image
                            (``rmeeto.ops.embed.embed_tokens``; results equal to rounding)
``RMEETO_FUSED_PROJ=0``    in inference, both scan directions' x_proj and dt_proj as four cuBLAS GEMMs instead of
                            one kernel (``rmeeto.ops.proj``; results equal to rounding)
``RMEETO_FUSED_OUTPROJ=0`` in inference, the two scan directions' sum and out_proj as an elementwise add and a
                            cuBLAS GEMM instead of one kernel (``rmeeto.ops.outproj``; results equal to rounding)
``RMEETO_FUSED_INPROJ=0``  in inference on Hopper, in_proj through cuBLAS instead of persistent TMA tiles, at the
                            widths those were measured ahead (``rmeeto.ops.inproj``; results equal to rounding)
``RMEETO_FUSED_MERGE_NORM=0`` in inference, the fused merge and the residual add + RMSNorm after it as two
                            kernels instead of one (``rmeeto.ops.triton.merge.match_merge_add_norm``; it
                            needs the merge and norm kernels on as well; for A/B timing, same results)
``RMEETO_FUSED_PLAN=0``    in inference, every mixer call through the general op dispatch instead of its prepared
                            launch sequence (``rmeeto.ops.triton.mixer.MixerPlan``: the same kernels and
                            bits, less host time per call; for A/B timing)
``RMEETO_PDL=1``            launch a block's forward kernels (norm, conv, scan, matching; in inference also the
                            projections, sum + out_proj and merge + norm) with programmatic dependent launch
                            (Hopper and newer: a kernel's programs start while the previous kernel drains and
                            wait for it on the GPU); experimental, for A/B timing
``RMEETO_FAST_LAUNCH=0``    launch every Triton kernel through ``kernel[grid](...)`` instead of the cached
                            launcher of :mod:`rmeeto.ops.triton._launch` (for A/B timing; same results)
``RMEETO_DIRECT_LAUNCH=0`` the prepared launches (:class:`rmeeto.ops.triton._launch.Launcher`) through Triton's
                            Python launcher instead of its C function with raw addresses (for A/B timing; same
                            results)
==========================  ===========================================================================

From Python: :func:`set_fused` / :func:`set_scan_backend` change the same switches, and
``with force_reference(): ...`` runs everything on the pure-PyTorch path (scan ``chunked`` unless
``reference`` is asked for, no fused conv / norm / merge) and restores the previous choice on exit.

A fused kernel is used only for CUDA tensors, with Triton importable and its switch on. One model can also
be put on the pure-PyTorch path alone: ``model.set_scan_backend("reference" | "chunked")`` gives its mixers a
pure-PyTorch scan, and the model passes :func:`op_backend` of that name (``"torch"``) to its conv, norm and
merge ops, so that model runs no Triton kernel at all.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Union

import torch

try:  # optional: without Triton every op takes its PyTorch path
    import triton  # noqa: F401

    _HAS_TRITON = True
except Exception:  # ImportError, or Triton present but broken
    _HAS_TRITON = False

__all__ = [
    "OPS",
    "PURE_SCAN_BACKENDS",
    "use_fused",
    "set_fused",
    "scan_backend",
    "set_scan_backend",
    "force_reference",
    "op_backend",
    "triton_available",
    "generation",
    "fast_launch",
    "pdl",
    "set_pdl",
    "set_fast_launch",
    "direct_launch",
    "set_direct_launch",
]

OPS = ("scan", "conv", "norm", "merge", "merge_norm", "embed", "embed_gemm", "proj", "outproj", "inproj", "plan")
# scan backends written in PyTorch alone; forcing one of them on a model forces the PyTorch conv / norm / merge
PURE_SCAN_BACKENDS = ("reference", "chunked")


def _switch(name: str) -> bool:
    return os.environ.get(name, "1") != "0"


_fused: dict[str, bool] = {
    "scan": True,  # the scan's switch is its backend name (RMEETO_SCAN_BACKEND)
    "conv": _switch("RMEETO_FUSED_CONV"),
    "norm": _switch("RMEETO_FUSED_NORM"),
    "merge": _switch("RMEETO_FUSED_MERGE"),
    "merge_norm": _switch("RMEETO_FUSED_MERGE_NORM"),
    "embed": _switch("RMEETO_FUSED_EMBED"),
    "embed_gemm": _switch("RMEETO_FUSED_EMBED_GEMM"),
    "proj": _switch("RMEETO_FUSED_PROJ"),
    "outproj": _switch("RMEETO_FUSED_OUTPROJ"),
    "inproj": _switch("RMEETO_FUSED_INPROJ"),
    "plan": _switch("RMEETO_FUSED_PLAN"),
}
_fast_launch: bool = _switch("RMEETO_FAST_LAUNCH")
_direct_launch: bool = _switch("RMEETO_DIRECT_LAUNCH")
_pdl: bool = os.environ.get("RMEETO_PDL", "0") == "1"
_scan_backend: str = os.environ.get("RMEETO_SCAN_BACKEND", "auto")
_reference_forced = False
_generation = 0  # bumped by every setter below: caches of decisions made from the switches key on it


def generation() -> int:
    """A number that changes whenever a switch of this module changes (set_fused, set_scan_backend,
    set_fast_launch, entering or leaving force_reference): what a cache of decisions taken from the switches
    (:class:`rmeeto.ops.triton.mixer.MixerPlan`'s) keys on."""
    return _generation


def _bump() -> None:
    global _generation
    _generation += 1


def _check_op(op: str) -> None:
    if op not in _fused:
        raise ValueError(f"unknown op {op!r}; choose from {list(OPS)}")


def triton_available() -> bool:
    """True when Triton imports here (a CUDA tensor is still needed for a fused kernel to run)."""
    return _HAS_TRITON


def use_fused(op: str, x: Union[torch.Tensor, torch.device], backend: str = "auto") -> bool:
    """Use the fused Triton kernel of ``op`` ("scan", "conv", "norm", "merge", "merge_norm", "embed", "embed_gemm",
    "proj", "outproj", "inproj"; "plan": the mixers' prepared launch sequences) for tensor (or device) ``x``?

    ``backend``: "auto" asks the switches (True only for CUDA, with Triton, the switch on and no
    :func:`force_reference` active); "torch" answers False; "triton" answers True (the caller asked for it)."""
    _check_op(op)
    if backend == "torch":
        return False
    if backend == "triton":
        return True
    if backend != "auto":
        raise ValueError(f"{op} backend {backend!r} is not valid; choose from 'auto', 'torch', 'triton'")
    device = x.device if isinstance(x, torch.Tensor) else torch.device(x)
    return device.type == "cuda" and _HAS_TRITON and _fused[op] and not _reference_forced


def set_fused(op: str, enabled: bool) -> None:
    """Turn the fused kernel of ``op`` on or off for the whole process (as its RMEETO_FUSED_* variable)."""
    _check_op(op)
    _fused[op] = bool(enabled)
    _bump()


def pdl() -> bool:
    """Whether a block's forward kernels are launched with programmatic dependent launch (``RMEETO_PDL=1``; the
    launchers also need a Hopper or newer GPU and a Triton that offers it: :func:`rmeeto.ops.triton._launch.pdl_meta`)."""
    return _pdl


def set_pdl(enabled: bool) -> None:
    """Turn programmatic dependent launch of a block's forward kernels on or off (as ``RMEETO_PDL``)."""
    global _pdl
    _pdl = bool(enabled)
    _bump()


def fast_launch() -> bool:
    """Launch Triton kernels through the cached launcher (:func:`rmeeto.ops.triton._launch.launch`)?"""
    return _fast_launch


def set_fast_launch(enabled: bool) -> None:
    """Turn the cached Triton launcher on or off for the whole process (as RMEETO_FAST_LAUNCH)."""
    global _fast_launch
    _fast_launch = bool(enabled)
    _bump()


def direct_launch() -> bool:
    """Let a prepared launch (:class:`rmeeto.ops.triton._launch.Launcher`) call the C function of Triton's launcher
    itself, with raw addresses, where Triton's version is one whose launcher that path was checked against?"""
    return _direct_launch


def set_direct_launch(enabled: bool) -> None:
    """Turn the direct launches of the prepared blocks on or off for the whole process (as RMEETO_DIRECT_LAUNCH).
    Read at every launch: no cached decision changes, so the generation stays."""
    global _direct_launch
    _direct_launch = bool(enabled)


def scan_backend(requested: str = "auto") -> str:
    """The scan backend to use when ``requested`` was asked for: "auto" becomes the process default
    (:func:`set_scan_backend`, RMEETO_SCAN_BACKEND); under :func:`force_reference` a non-PyTorch backend
    becomes "chunked". May still be "auto" (then the fused kernel is used where :func:`use_fused` says so)."""
    name = _scan_backend if requested == "auto" else requested
    if _reference_forced and name not in PURE_SCAN_BACKENDS:
        return "chunked"
    return name


def set_scan_backend(name: str) -> None:
    """Set the process-wide default scan backend ("auto" restores automatic choice). Names are checked
    against the registered backends by :func:`rmeeto.ops.selective_scan.set_default_backend`, which calls this."""
    global _scan_backend
    if not isinstance(name, str):
        raise TypeError(f"scan backend must be a string, got {type(name).__name__}")
    _scan_backend = name
    _bump()


def op_backend(scan_backend_name: str) -> str:
    """Backend a model passes to its conv / norm / merge ops when its mixers use ``scan_backend_name``:
    "torch" for a pure-PyTorch scan (that model's reference path), otherwise "auto"."""
    return "torch" if scan_backend_name in PURE_SCAN_BACKENDS else "auto"


@contextlib.contextmanager
def force_reference() -> Iterator[None]:
    """Within the block, every op takes its pure-PyTorch path (for tests and debugging); restored on exit."""
    global _reference_forced
    previous = _reference_forced
    _reference_forced = True
    _bump()
    try:
        yield
    finally:
        _reference_forced = previous
        _bump()

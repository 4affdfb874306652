"""Export a (merged or plain) Vim as a self-contained artefact for deployment.

    from rmeeto.export import export_model
    export_model(model, "vim_s_r11.pt2", format="exported-program", batch_size=1, dynamic_batch=True)
    program = torch.export.load("vim_s_r11.pt2").module()     # then program(images) -> logits [batch, classes]

Both formats trace the pure-PyTorch path: the model's scan backend is forced to ``"reference"`` while exporting
(the Triton kernels are not traceable, and the chunked scan writes with ``out=`` ops an exported graph cannot
run outside ``no_grad``), the conv and norm to their PyTorch forms, which the ``reference`` scan selects. The
merge schedule is static (computed from shapes), so a merged model exports as one graph with its token counts
baked in. Export happens on the CPU in float32; the artefact runs wherever its runtime does:

- ``exported-program`` (``.pt2``, :func:`torch.export.save`): ``torch.export.load(path).module()`` in a
  process with the PyTorch that wrote it or a newer one (the file format is versioned), CPU or (after
  ``.to("cuda")``) GPU; or ahead-of-time compiled with AOTInductor.
- ``onnx`` (PyTorch's ``torch.onnx.export``, dynamo exporter; needs ``pip install rmeeto[export]``):
  onnxruntime on CPU (``CPUExecutionProvider``) or GPU (``CUDAExecutionProvider``), TensorRT, OpenVINO...

The selective scan unrolls into one step per token, so the graph grows with tokens x layers (a few minutes and
a large file for Vim-S).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Callable, Optional, Union

import torch
import torch.nn as nn

from rmeeto._files import atomic_path, replace_target

__all__ = ["FORMATS", "ExportError", "export_model", "run_exported", "verify_export"]

FORMATS = ("exported-program", "onnx")
_SUFFIX = {"exported-program": ".pt2", "onnx": ".onnx"}
_EXPORT_BACKEND = "reference"


class ExportError(ValueError):
    """Bad export input or a failed export: one line."""


def _example(model: nn.Module, batch_size: int) -> torch.Tensor:
    c, h, w = model.pretrained_cfg.input_size if hasattr(model, "pretrained_cfg") else (3, model.img_size, model.img_size)
    return torch.randn(batch_size, c, h, w, generator=torch.Generator().manual_seed(0))


def _prepare(model: nn.Module) -> nn.Module:
    """A float32 CPU eval copy of ``model`` on the pure-PyTorch path (the caller's model is left as it was)."""
    model = copy.deepcopy(model).float().cpu().eval()
    model.set_scan_backend(_EXPORT_BACKEND)
    return model


def _batch_dim(dynamic_batch: bool, batch_size: int):
    if not dynamic_batch:
        return None
    # min 1 (not the example's size): one artefact for any batch; the graph has no batch-dependent branch
    return ({0: torch.export.Dim("batch", min=1, max=max(4096, batch_size))},)


def _export_program(model: nn.Module, x: torch.Tensor, dynamic_batch: bool, out: Path) -> None:
    with torch.no_grad():
        program = torch.export.export(model, (x,), dynamic_shapes=_batch_dim(dynamic_batch, x.shape[0]))
    torch.export.save(program, str(out))


def _onnx_sort_stable():
    """ONNX translation of ``aten.sort.stable`` (the merge ranks its edges with a stable sort; the ONNX exporter
    has none): TopK over the whole axis, which the ONNX spec orders by lower index on ties, i.e. stably."""
    from onnxscript import opset18 as op

    def sort_stable(self, stable=None, dim=-1, descending=False):
        length = op.Reshape(op.Gather(op.Shape(self), op.Constant(value_int=dim)), op.Constant(value_ints=[1]))
        return op.TopK(self, length, axis=dim, largest=1 if descending else 0, sorted=1)

    return sort_stable


def _export_onnx(model: nn.Module, x: torch.Tensor, dynamic_batch: bool, out: Path) -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401  (the dynamo exporter is built on it)
    except ImportError:
        raise ExportError("--format onnx needs the onnx and onnxscript packages: pip install 'rmeeto[export]'") from None
    with torch.no_grad():
        torch.onnx.export(
            model, (x,), str(out), input_names=["images"], output_names=["logits"], dynamo=True,
            dynamic_shapes=_batch_dim(dynamic_batch, x.shape[0]), external_data=False, verbose=False,
            custom_translation_table={torch.ops.aten.sort.stable: _onnx_sort_stable()},
        )


_EXPORTERS: dict[str, Callable[[nn.Module, torch.Tensor, bool, Path], None]] = {
    "exported-program": _export_program,
    "onnx": _export_onnx,
}


def export_model(
    model: nn.Module,
    out: Union[str, os.PathLike],
    format: str = "exported-program",
    batch_size: int = 1,
    dynamic_batch: bool = False,
    log: Optional[Callable[[str], None]] = None,
) -> Path:
    """Write ``model`` (a :class:`~rmeeto.models.vim.VisionMamba`, merged or not) to ``out`` in ``format``.

    The artefact maps images [batch, channels, height, width] (float32, the model's input size) to logits
    [batch, classes]. ``batch_size`` is the example batch traced (and the only batch accepted unless
    ``dynamic_batch``, which accepts any batch >= 1). Returns the path written."""
    if format not in _EXPORTERS:
        raise ExportError(f"unknown export format {format!r}; choose from {', '.join(FORMATS)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ExportError(f"batch size must be an int >= 1, got {batch_size!r}")
    if not hasattr(model, "set_scan_backend"):
        raise ExportError(f"cannot export a {type(model).__name__}: expected an rmeeto VisionMamba")
    out = Path(out)
    if out.suffix != _SUFFIX[format]:
        raise ExportError(f"{format} files end in {_SUFFIX[format]}, got {out.name!r}")
    if out.is_dir():
        raise ExportError(f"{out} is a directory; give a file name")
    log = log or (lambda message: None)
    prepared = _prepare(model)
    x = _example(prepared, batch_size)
    with torch.no_grad():
        if not torch.isfinite(prepared(x)).all():  # an artefact of NaN weights would "verify" against itself
            raise ExportError("the model's outputs are not finite (NaN or inf) on a random input: its weights are "
                              "diverged or corrupt; nothing written")
    shape = ("any" if dynamic_batch else str(batch_size)) + "x" + "x".join(map(str, x.shape[1:]))
    log(f"exporting {format} ({shape} input, pure-PyTorch path) ...")
    out = replace_target(out)
    try:  # written beside, then renamed over ``out``: a failed export leaves an earlier artefact of that name intact
        with atomic_path(out, suffix=f".tmp{out.suffix}") as tmp:
            _EXPORTERS[format](prepared, x, dynamic_batch, tmp)
    except ExportError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"{format} export failed: {type(exc).__name__}: {first[:200]}") from exc
    log(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    return out


def run_exported(path: Union[str, os.PathLike], images: torch.Tensor) -> torch.Tensor:
    """Run an artefact written by :func:`export_model` on ``images`` [batch, C, H, W]: logits [batch, classes]
    (``.pt2`` through :func:`torch.export.load`, ``.onnx`` through onnxruntime on the CPU)."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (logits,) = session.run(None, {session.get_inputs()[0].name: images.float().cpu().numpy()})
        return torch.from_numpy(logits)
    with torch.no_grad():
        return torch.export.load(str(path)).module()(images.float().cpu())


def verify_export(model: nn.Module, path: Union[str, os.PathLike], batch_sizes=(1,), atol: float = 1e-4) -> float:
    """Largest |exported - eager| logit difference over random batches of each size in ``batch_sizes``;
    raises :class:`ExportError` if it exceeds ``atol`` (float32)."""
    eager = copy.deepcopy(model).float().cpu().eval()
    worst = 0.0
    for n in batch_sizes:
        images = _example(eager, n)
        with torch.no_grad():
            expected = eager(images)
        got = run_exported(path, images)
        if got.shape != expected.shape:
            raise ExportError(f"{path}: batch {n} gave logits {tuple(got.shape)}, expected {tuple(expected.shape)}")
        diff = (got.float() - expected).abs()
        if not torch.isfinite(diff).all():  # max() would pass a NaN over: nan > x is False
            raise ExportError(f"{path}: batch {n} gave logits that are not finite (NaN or inf)")
        worst = max(worst, diff.max().item())
    if worst > atol:
        raise ExportError(f"{path}: exported logits differ from the eager model by {worst:.3g} (> {atol:g})")
    return worst

"""Throughput and latency of unmerged vs merged Vims, in one run on one device.

Inference follows the official protocol (random batch, eval, no_grad, fp16 weights and inputs by default) with
proper timing: warm-up, then many timed repeats with CUDA events (host clock on CPU); we report the median,
the 10th-90th percentile spread, images/s from the median, and peak memory. Inputs rotate among several
buffers so the timing does not measure a cache-resident image batch.

The training step is the re-training setup: merged student forward + backward under bf16 autocast, the
unmerged teacher's forward under no_grad, classification + KL distillation loss, one AdamW step.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

import rmeeto
from rmeeto.backbones import is_vit, is_vit_name, set_scan_backend
from rmeeto.fast import accelerate
from rmeeto.merge import MergeConfig
from rmeeto.runtime import DTYPES, resolve_device, resolve_dtype
from rmeeto.timing import BENCH, measure
from rmeeto.train import DistillationLoss, StudentGraph, TeacherForward, distillation_forward

__all__ = ["bench_inference", "bench_train_step", "make_train_step", "DTYPES"]


def _measure(fn, inputs, warmup: int, repeats: int, device: torch.device, **fields) -> dict:
    """Time ``fn`` over ``inputs`` by the :data:`~rmeeto.timing.BENCH` protocol (one CUDA event pair per
    repeat) and return the common result fields (plus ``fields``)."""
    from rmeeto.ops.selective_scan import resolve_backend

    timing = measure(fn, inputs, batch_size=fields["batch_size"], device=device,
                     protocol=BENCH.with_counts(warmup, repeats))
    # a ViT has no scan kernel: its rows say "-" rather than the kernel a Vim would have used
    scan = fields.pop("scan", True)
    fields["backend"] = resolve_backend(fields.get("backend", "auto"), device) if scan else "-"
    return {
        **fields,
        "device": timing.device,
        "repeats": timing.repeats,
        "ms_median": timing.median_ms,
        "ms_p10": timing.p10_ms,
        "ms_p90": timing.p90_ms,
        "images_per_s": timing.images_per_s,
        "peak_mem_mb": float("nan") if timing.peak_mem_mb is None else timing.peak_mem_mb,
    }


def _build(model_name: str, merge_config: Optional[MergeConfig], device, img_size=None, **overrides):
    kw = dict(overrides)
    if img_size is not None:
        kw["img_size"] = img_size
    model = rmeeto.create_model(model_name, **kw).to(device)
    if merge_config is not None:
        rmeeto.apply_merge(model, merge_config)
    return model


def _input_size(model, img_size: Optional[int] = None) -> tuple[int, ...]:
    """One input of the built model: (C, H, W), or (C, T, H, W) for a video model, with H = W = ``img_size``
    when given (the model was built for it)."""
    shape = tuple(model.pretrained_cfg.input_size)
    return shape if img_size is None else (*shape[:-2], img_size, img_size)


def bench_inference(
    model_name: str,
    merge_config: Optional[MergeConfig] = None,
    *,
    batch_size: int = 128,
    img_size: Optional[int] = None,
    dtype: str = "fp16",
    mode: str = "auto",
    backend: str = "auto",
    warmup: int = 10,
    repeats: int = 50,
    device: str = "cuda",
    num_input_buffers: int = 3,
    seed: int = 0,
) -> dict:
    """Time ``model(images)`` for one model/config. Returns a dict (images_per_s, ms median/p10/p90, peak MB)."""
    device = resolve_device(device)
    tdtype = resolve_dtype(dtype, device)
    torch.manual_seed(seed)
    model = _build(model_name, merge_config, device, img_size).eval()
    set_scan_backend(model, backend)
    if tdtype != torch.float32:
        model = model.to(tdtype)  # official protocol: model.half() and half inputs
    shape = _input_size(model, img_size)
    inputs = [torch.randn(batch_size, *shape, device=device).to(tdtype) for _ in range(num_input_buffers)]
    fn = accelerate(model, mode)
    return _measure(
        fn, inputs, warmup, repeats, device, model=model_name,
        merge=None if merge_config is None else merge_config.to_dict(), batch_size=batch_size, img_size=shape[-1],
        dtype=dtype, mode=mode if mode != "auto" else ("cudagraph" if device.type == "cuda" else "eager"),
        backend=backend, scan=not is_vit(model),
    )


def make_train_step(
    model_name: str,
    merge_config: Optional[MergeConfig] = None,
    *,
    batch_size: int = 128,
    img_size: Optional[int] = None,
    dtype: str = "bf16",
    backend: str = "auto",
    teacher: bool = True,
    alpha: float = 0.5,
    drop_path_rate: float = 0.1,
    graphs: bool = True,
    device: str = "cuda",
):
    """Build one re-training step (student fwd+bwd, teacher fwd, AdamW step) on random batches -> (step,
    batches): ``step(batch)`` runs it. ``graphs``: on CUDA, replay the student's forward/backward and the
    teacher's forward from CUDA graphs, as ``rmeeto retrain`` does on one GPU. Timed by :func:`bench_train_step`,
    profiled by benchmarks/profile_gpu.py."""
    device = resolve_device(device)
    tdtype = resolve_dtype(dtype, device)
    student = _build(model_name, merge_config, device, img_size, drop_path_rate=drop_path_rate).train()
    set_scan_backend(student, backend)
    teacher_fn = None
    if teacher:
        teacher_model = _build(model_name, None, device, img_size)
        set_scan_backend(teacher_model, backend)
        teacher_fn = TeacherForward(teacher_model, tdtype, graph=graphs)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-5, weight_decay=0.05, fused=device.type == "cuda")
    shape = _input_size(student, img_size)
    num_classes = student.num_classes
    batches = [
        (torch.randn(batch_size, *shape, device=device), torch.randint(0, num_classes, (batch_size,), device=device))
        for _ in range(2)
    ]
    criterion = DistillationLoss(nn.CrossEntropyLoss(), alpha)  # the re-training loss (CE + alpha * KL)
    student_fn = StudentGraph(student, tdtype) if graphs and device.type == "cuda" else student

    def step(batch):
        x, y = batch
        loss, _ = distillation_forward(student_fn, teacher_fn, criterion, x, y, tdtype)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, batches


def bench_train_step(
    model_name: str,
    merge_config: Optional[MergeConfig] = None,
    *,
    batch_size: int = 128,
    img_size: Optional[int] = None,
    dtype: str = "bf16",
    backend: str = "auto",
    teacher: bool = True,
    alpha: float = 0.5,
    drop_path_rate: float = 0.1,
    graphs: bool = True,
    warmup: int = 3,
    repeats: int = 10,
    device: str = "cuda",
    seed: int = 0,
) -> dict:
    """Time one re-training step (:func:`make_train_step`) per batch."""
    torch.manual_seed(seed)
    step, batches = make_train_step(
        model_name, merge_config, batch_size=batch_size, img_size=img_size, dtype=dtype, backend=backend,
        teacher=teacher, alpha=alpha, drop_path_rate=drop_path_rate, graphs=graphs, device=device,
    )
    device = resolve_device(device)
    return _measure(
        step, batches, warmup, repeats, device, model=model_name,
        merge=None if merge_config is None else merge_config.to_dict(), batch_size=batch_size, dtype=dtype,
        teacher=teacher, backend=backend, mode="cudagraph" if graphs and device.type == "cuda" else "eager",
        scan=not is_vit_name(model_name),
    )

"""Throughput and latency of unmerged vs merged Vims, in one run on one device, in each execution mode.

Inference follows the official protocol (random batch, eval, no_grad, fp16 weights and inputs by default) with
proper timing: warm-up, then many timed repeats with CUDA events (host clock on CPU); we report the median,
the 10th-90th percentile spread, images/s from the median, and peak memory. Inputs rotate among several
buffers so the timing does not measure a cache-resident image batch.

The training step is the re-training setup: merged student forward + backward under bf16 autocast, the
unmerged teacher's forward under no_grad, classification + KL distillation loss, one AdamW step.

Modes (how the model is called; see :mod:`rmeeto.fast`): ``eager`` (``model(x)``), ``compile``
(``torch.compile(model)``), ``cudagraph`` (the forward replayed from a CUDA graph; for the training step the
student's forward+backward and the teacher's forward, as ``rmeeto retrain`` does on one GPU), and for inference
``compile+cudagraph``. Each result also carries the time of the first call (compilation, graph capture) and,
on CUDA, the launches of one call (:func:`count_launches`). :func:`bench_modes` runs several modes for the
unmerged and the merged model and reports a mode that fails (Inductor refusing a kernel, say) as a result
with an ``error`` instead of stopping; :func:`compare_modes` pairs them into one row per mode.
"""

from __future__ import annotations

import gc
import inspect
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence, Union

import torch
import torch.nn as nn

import rmeeto
from rmeeto.backbones import is_vit, is_vit_name, set_scan_backend
from rmeeto.fast import MODES, accelerate, compile_model
from rmeeto.merge import MergeConfig
from rmeeto.runtime import DTYPES, resolve_device, resolve_dtype
from rmeeto.timing import BENCH, Timing, measure
from rmeeto.train import DistillationLoss, StudentGraph, TeacherForward, distillation_forward

__all__ = ["bench_inference", "bench_train_step", "bench_modes", "compare_modes", "make_train_step",
           "count_launches", "Launches", "describe_failure", "default_modes", "INFERENCE_MODES", "TRAIN_MODES",
           "DTYPES"]

INFERENCE_MODES = tuple(m for m in MODES if m != "auto")
# Inductor's own CUDA graphs around a training step would fight StudentGraph's capture: not offered
TRAIN_MODES = ("eager", "compile", "cudagraph")
# the measured fields a failed run leaves empty (None)
_MEASURED = ("device", "repeats", "ms_median", "ms_p10", "ms_p90", "images_per_s", "peak_mem_mb", "first_call_s",
             "launches", "host_launches")


def default_modes(device) -> tuple[str, ...]:
    """The modes ``rmeeto bench`` runs unless told: eager, compile and cudagraph on CUDA; eager on CPU (where
    Inductor compiles C++ for minutes and there are no CUDA graphs)."""
    return ("eager", "compile", "cudagraph") if resolve_device(device).type == "cuda" else ("eager",)


def resolve_mode(mode: str, device: torch.device, choices: Sequence[str] = INFERENCE_MODES) -> str:
    """``mode`` checked against ``choices`` and ``device``; ``"auto"`` is cudagraph on CUDA, else eager."""
    if mode == "auto":
        return "cudagraph" if device.type == "cuda" else "eager"
    if mode not in choices:
        raise ValueError(f"mode={mode!r} is not valid here; choose from {', '.join(map(repr, ('auto', *choices)))}")
    if "cudagraph" in mode and device.type != "cuda":
        raise ValueError(f"mode={mode!r} needs a CUDA device")
    return mode


# ============================================================================================ launches
# host calls that put work on the GPU: kernel launches through the runtime and the driver API (Triton launches
# with cuLaunchKernelEx), graph launches, asynchronous copies and fills
_HOST_LAUNCH_PREFIXES = ("cudaLaunch", "cuLaunch", "cudaGraphLaunch", "cuGraphLaunch", "cudaMemcpy", "cuMemcpy",
                         "cudaMemset", "cuMemset")
# the profiler's own bookkeeping, listed among the device events but no work of the profiled call
_PROFILER_OVERHEAD = ("Activity Buffer Request",)


@dataclass(frozen=True)
class Launches:
    """The GPU work of one call, counted by torch.profiler (CUPTI), exact rather than sampled.

    gpu: kernels, copies and fills the GPU ran, a CUDA graph's nodes included (in eager mode each was one host
    launch; within a graph each still costs the GPU a launch gap). host: the launch calls the host made for
    them (a graph replay is one), as far as the profiler traces the launch API (the driver API included)."""

    gpu: int
    host: int

    @classmethod
    def from_events(cls, events: Iterable) -> "Launches":
        """Count ``prof.key_averages()`` (items with ``key``, ``count``, ``device_type``)."""
        from torch.autograd import DeviceType

        gpu = host = 0
        for e in events:
            if e.device_type == DeviceType.CPU:
                host += e.count if e.key.startswith(_HOST_LAUNCH_PREFIXES) else 0
            elif e.key not in _PROFILER_OVERHEAD:
                gpu += e.count
        return cls(gpu, host)


def count_launches(fn: Callable, arg, device: Optional[torch.device] = None) -> Launches:
    """Launches of one call ``fn(arg)`` on CUDA ``device`` (call it warm: a first call also compiles or
    captures)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn(arg)
        torch.cuda.synchronize(device)
    return Launches.from_events(prof.key_averages())


# ============================================================================================ one measurement
def _first_call(fn, x, device: torch.device) -> float:
    """Seconds of ``fn``'s first call on its own (compilation, graph capture)."""
    t0 = time.perf_counter()
    fn(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _result(timing: Timing, first_call_s: float, fn, x, device: torch.device, **fields) -> dict:
    """The common result fields of one timed case (plus ``fields``), with one profiled call for the launches
    (CUDA only)."""
    launches = count_launches(fn, x, device) if device.type == "cuda" else None
    return {
        **fields,
        "device": timing.device,
        "repeats": timing.repeats,
        "ms_median": timing.median_ms,
        "ms_p10": timing.p10_ms,
        "ms_p90": timing.p90_ms,
        "images_per_s": timing.images_per_s,
        "peak_mem_mb": float("nan") if timing.peak_mem_mb is None else timing.peak_mem_mb,
        "first_call_s": first_call_s,
        "launches": None if launches is None else launches.gpu,
        "host_launches": None if launches is None else launches.host,
    }


def _measure(fn, inputs, warmup: int, repeats: int, device: torch.device, **fields) -> dict:
    """Time ``fn`` over ``inputs``: its first call on its own (compilation, graph capture), then the
    :data:`~rmeeto.timing.BENCH` protocol (one CUDA event pair per repeat), then one profiled call for the
    launches (CUDA only). Returns the common result fields (plus ``fields``)."""
    first_call_s = _first_call(fn, inputs[0], device)
    timing = measure(fn, inputs, batch_size=fields["batch_size"], device=device,
                     protocol=BENCH.with_counts(warmup, repeats))
    return _result(timing, first_call_s, fn, inputs[0], device, **fields)


def _scan_backend(backend: str, device: torch.device, scan: bool) -> str:
    """The scan kernel a row ran; a ViT has no scan kernel: its rows say "-" rather than the one a Vim would
    have used."""
    from rmeeto.ops.selective_scan import resolve_backend

    return resolve_backend(backend, device) if scan else "-"


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


def _inference_case(model_name: str, merge_config: Optional[MergeConfig], *, batch_size: int, img_size: Optional[int],
                    dtype: str, mode: str, backend: str, device: torch.device, num_input_buffers: int, seed: int,
                    compile_backend: Union[str, Callable]) -> tuple[Callable, list, dict]:
    """(callable, inputs, result fields) of one inference case: the model built, cast and wrapped for ``mode``."""
    tdtype = resolve_dtype(dtype, device)
    torch.manual_seed(seed)
    model = _build(model_name, merge_config, device, img_size).eval()
    set_scan_backend(model, backend)
    if tdtype != torch.float32:
        model = model.to(tdtype)  # official protocol: model.half() and half inputs
    shape = _input_size(model, img_size)
    inputs = [torch.randn(batch_size, *shape, device=device).to(tdtype) for _ in range(num_input_buffers)]
    fn = accelerate(model, mode, compile_backend=compile_backend)
    fields = dict(model=model_name, merge=None if merge_config is None else merge_config.to_dict(),
                  batch_size=batch_size, img_size=shape[-1], dtype=dtype, mode=mode,
                  backend=_scan_backend(backend, device, not is_vit(model)))
    return fn, inputs, fields


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
    compile_backend: Union[str, Callable] = "inductor",
) -> dict:
    """Time ``model(images)`` for one model/config in one mode (:data:`INFERENCE_MODES`, or ``"auto"``).
    Returns a dict: images_per_s, ms median/p10/p90, peak MB, first_call_s (s), launches / host_launches of
    one call (None on CPU), and the settings."""
    device = resolve_device(device)
    mode = resolve_mode(mode, device)
    if "compile" in mode:
        torch._dynamo.reset()  # a fresh cache: earlier models' graphs neither count against its limit nor linger
    fn, inputs, fields = _inference_case(
        model_name, merge_config, batch_size=batch_size, img_size=img_size, dtype=dtype, mode=mode, backend=backend,
        device=device, num_input_buffers=num_input_buffers, seed=seed, compile_backend=compile_backend)
    return _measure(fn, inputs, warmup, repeats, device, **fields)


def bench_inference_rounds(
    model_name: str,
    merge_config: MergeConfig,
    *,
    rounds: int = 5,
    warmup: int = 10,
    repeats: int = 50,
    mode: str = "auto",
    device: str = "cuda",
    **kwargs,
) -> list[dict]:
    """:func:`bench_inference` of the unmerged model and of the merged one (``merge_config``) timed in ``rounds``
    alternating rounds, both models built first: each round times the unmerged model, then the merged one,
    ``ceil(repeats / rounds)`` repeats each after ``ceil(warmup / rounds)`` warm-up calls. A host whose speed
    drifts during the run (eager mode is host-bound where kernels are short; the device hosts' speed was seen to
    change 2x within one process) then slows both alike, instead of deciding the ratio.

    Returns [unmerged result, merged result] as :func:`bench_inference` returns them, over all rounds' repeats,
    plus ``rounds`` and, in both, ``round_ratios``: merged over unmerged images/s within each round. A side whose
    building or first call raises gives a result with ``error`` ("failed: ...") and None measured fields; the
    other side is then timed alone. ``kwargs`` as :func:`bench_inference`."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    device = resolve_device(device)
    mode = resolve_mode(mode, device)
    if "compile" in mode:
        torch._dynamo.reset()
    per_round, warm = -(-repeats // rounds), -(-warmup // rounds)
    case_kwargs = _case_kwargs(kwargs)  # a wrong keyword is the caller's error, not a failed run
    sides: list[Optional[tuple]] = []
    results: list[dict] = []
    for cfg in (None, merge_config):
        try:
            fn, inputs, fields = _inference_case(model_name, cfg, mode=mode, device=device, **case_kwargs)
            sides.append((fn, inputs, fields, _first_call(fn, inputs[0], device), []))
            results.append({})
        except Exception as exc:  # the row says why; the other side is still timed
            sides.append(None)
            results.append(_failed_row(model_name, cfg, mode, kwargs, device, exc))
    for _ in range(rounds):
        for side in sides:
            if side is not None:
                fn, inputs, fields, _, timings = side
                timings.append(measure(fn, inputs, batch_size=fields["batch_size"], device=device,
                                       protocol=BENCH.with_counts(warm, per_round)))
    ratios = None
    if all(side is not None for side in sides):
        u, m = sides[0][4], sides[1][4]
        ratios = [mt.images_per_s / ut.images_per_s for ut, mt in zip(u, m)]
    for i, side in enumerate(sides):
        if side is None:
            continue
        fn, inputs, fields, first_s, timings = side
        peaks = [t.peak_mem_mb for t in timings if t.peak_mem_mb is not None]
        whole = Timing(tuple(ms for t in timings for ms in t.times_ms), timings[0].batch_size,
                       sum(t.repeats for t in timings), sum(t.warmup for t in timings), timings[0].device,
                       max(peaks) if peaks else None)
        results[i] = _result(whole, first_s, fn, inputs[0], device, **fields)
    for r in results:
        r["rounds"] = rounds
        r["round_ratios"] = ratios
    return results


_CASE_ARGS = ("batch_size", "img_size", "dtype", "backend", "num_input_buffers", "seed", "compile_backend")


def _case_kwargs(kwargs: dict) -> dict:
    """:func:`bench_inference`'s keyword defaults (read from its signature: one place), overridden by ``kwargs``,
    for :func:`_inference_case`. Raises TypeError for a keyword it does not take."""
    unknown = set(kwargs) - set(_CASE_ARGS)
    if unknown:
        raise TypeError(f"unexpected keyword arguments: {', '.join(sorted(unknown))}")
    params = inspect.signature(bench_inference).parameters
    return {**{name: params[name].default for name in _CASE_ARGS}, **kwargs}


def _failed_row(model_name: str, cfg: Optional[MergeConfig], mode: str, kwargs: dict, device: torch.device,
                exc: BaseException) -> dict:
    """The result of a run that raised: its settings, None measured fields and ``error``."""
    return {"model": model_name, "merge": None if cfg is None else cfg.to_dict(), "mode": mode,
            "batch_size": kwargs.get("batch_size"), "dtype": kwargs.get("dtype"),
            "backend": _scan_backend(kwargs.get("backend", "auto"), device, not is_vit_name(model_name)),
            **dict.fromkeys(_MEASURED), "error": describe_failure(exc)}


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
    mode: str = "auto",
    device: str = "cuda",
    compile_backend: Union[str, Callable] = "inductor",
):
    """Build one re-training step (student fwd+bwd, teacher fwd, AdamW step) on random batches -> (step,
    batches): ``step(batch)`` runs it. ``mode`` (:data:`TRAIN_MODES`; ``"auto"``: cudagraph on CUDA, else
    eager): ``eager`` calls the student and the teacher as they are; ``compile`` calls ``torch.compile`` of each
    (their forwards, and the student's backward through AOTAutograd; loss and optimizer stay eager);
    ``cudagraph`` replays the student's forward/backward and the teacher's forward from CUDA graphs, as
    ``rmeeto retrain`` does on one GPU. Timed by :func:`bench_train_step`, profiled by
    benchmarks/profile_gpu.py."""
    device = resolve_device(device)
    mode = resolve_mode(mode, device, TRAIN_MODES)
    tdtype = resolve_dtype(dtype, device)
    if mode == "compile":
        torch._dynamo.reset()

    def wrap(model: nn.Module) -> nn.Module:
        return compile_model(model, compile_backend) if mode == "compile" else model

    student = _build(model_name, merge_config, device, img_size, drop_path_rate=drop_path_rate).train()
    set_scan_backend(student, backend)
    teacher_fn = None
    if teacher:
        teacher_model = _build(model_name, None, device, img_size)
        set_scan_backend(teacher_model, backend)
        teacher_fn = TeacherForward(wrap(teacher_model), tdtype, graph=mode == "cudagraph")
    opt = torch.optim.AdamW(student.parameters(), lr=1e-5, weight_decay=0.05, fused=device.type == "cuda")
    shape = _input_size(student, img_size)
    num_classes = student.num_classes
    batches = [
        (torch.randn(batch_size, *shape, device=device), torch.randint(0, num_classes, (batch_size,), device=device))
        for _ in range(2)
    ]
    criterion = DistillationLoss(nn.CrossEntropyLoss(), alpha)  # the re-training loss (CE + alpha * KL)
    student_fn = StudentGraph(student, tdtype) if mode == "cudagraph" else wrap(student)

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
    warmup: int = 3,
    repeats: int = 10,
    seed: int = 0,
    **step_options,
) -> dict:
    """Time one re-training step (:func:`make_train_step`, given ``step_options``: its keyword arguments, with its
    defaults) per batch; the fields of :func:`bench_inference` (launches: of one whole step)."""
    torch.manual_seed(seed)
    # bound against make_train_step's own signature: one list of options and defaults, and an unknown option
    # raises TypeError here as it would there
    bound = inspect.signature(make_train_step).bind(model_name, merge_config, **step_options)
    bound.apply_defaults()
    options = bound.arguments
    device = resolve_device(options["device"])
    mode = resolve_mode(options["mode"], device, TRAIN_MODES)
    step, batches = make_train_step(**{**options, "device": device, "mode": mode})
    return _measure(
        step, batches, warmup, repeats, device, model=model_name,
        merge=None if merge_config is None else merge_config.to_dict(), batch_size=options["batch_size"],
        dtype=options["dtype"], teacher=options["teacher"],
        backend=_scan_backend(options["backend"], device, not is_vit_name(model_name)), mode=mode,
    )


# ============================================================================================ modes side by side
def describe_failure(exc: BaseException, limit: int = 160) -> str:
    """``exc`` as "failed: <Type>: <first informative line>". Dynamo wraps a backend's error under a line such
    as "backend='inductor' raised:", so a first line ending in ':' gives way to the next one."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = next((line for line in lines if not line.endswith(":")), lines[0] if lines else "")
    return f"failed: {type(exc).__name__}: {text}"[:limit]


def bench_modes(
    model_name: str,
    merge_config: Optional[MergeConfig],
    *,
    modes: Sequence[str],
    train: bool = False,
    rounds: int = 1,
    on_result: Optional[Callable[[dict], None]] = None,
    **kwargs,
) -> list[dict]:
    """Each of ``modes`` for the unmerged model and then the merged one (``merge_config``): one result per run as
    :func:`bench_inference` (with ``train``: :func:`bench_train_step`, modes from :data:`TRAIN_MODES`) returns
    it, given ``kwargs``, plus ``section`` ("inference" or "train") and ``speedup_vs_unmerged`` (images/s over
    the unmerged run of the same mode; None where either failed). ``on_result(result)`` is called as each run
    ends (to show progress). ``rounds`` > 1 (inference): both models of a mode are built first and timed in
    alternating rounds (:func:`bench_inference_rounds`); ``speedup_vs_unmerged`` is then the median of the
    ratios within rounds.

    A run that raises (torch.compile failing in Inductor, a graph capture refused) gives a result whose
    ``error`` is "failed: <one line>" and whose measured fields are None; the other runs go on. Modes are
    checked first: an unknown mode, or one the device cannot run, raises ValueError before anything runs."""
    device = resolve_device(kwargs.pop("device", "cuda"))
    modes = [resolve_mode(m, device, TRAIN_MODES if train else INFERENCE_MODES) for m in modes]
    if not modes:
        raise ValueError("modes is empty: give at least one mode")
    bench = bench_train_step if train else bench_inference
    section = "train" if train else "inference"
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    results = []

    def tidy():
        if "compile" in mode:
            torch._dynamo.reset()
        if device.type == "cuda":
            gc.collect()  # a failed run's frames (its model, its graphs) sit in reference cycles
            torch.cuda.empty_cache()

    for mode in modes:
        if rounds > 1 and not train:
            try:
                pair = bench_inference_rounds(model_name, merge_config, rounds=rounds, mode=mode, device=device,
                                              **kwargs)
            except Exception as exc:  # a failure while timing: both rows say it
                pair = [_failed_row(model_name, cfg, mode, kwargs, device, exc) for cfg in (None, merge_config)]
            finally:
                tidy()
        else:
            pair = []
            for cfg in (None, merge_config):
                try:
                    pair.append(bench(model_name, cfg, mode=mode, device=device, **kwargs))
                except Exception as exc:  # reported in the row: one mode failing must not cost the others
                    pair.append(_failed_row(model_name, cfg, mode, kwargs, device, exc))
                finally:
                    tidy()
        base = pair[0]["images_per_s"]
        for cfg, r in zip((None, merge_config), pair):
            r.setdefault("error", None)
            r["section"] = section
            ips = r["images_per_s"]
            if cfg is None:
                r["speedup_vs_unmerged"] = None if ips is None else 1.0
            elif r.get("round_ratios"):  # the median of the ratios within rounds (neighbours in time)
                r["speedup_vs_unmerged"] = statistics.median(r["round_ratios"])
            else:
                r["speedup_vs_unmerged"] = None if ips is None or base is None else ips / base
            results.append(r)
            if on_result is not None:
                on_result(r)
    return results


_COMPARED = ("images_per_s", "ms_median", "ms_p10", "ms_p90", "launches", "host_launches", "first_call_s",
             "peak_mem_mb", "error")


def compare_modes(results: Sequence[dict]) -> list[dict]:
    """Pair :func:`bench_modes` results into one row per (section, model, backend, mode): ``unmerged_<field>``
    and ``merged_<field>`` for images_per_s, ms_median/p10/p90, launches, host_launches, first_call_s,
    peak_mem_mb and error, the merged config (``merge``) and ``merged_over_unmerged`` (images/s ratio, None
    where either run failed; with alternating rounds the median of the ratios within rounds, and the rounds'
    ratios as ``round_ratios``)."""
    rows: dict[tuple, dict] = {}
    for r in results:
        key = (r["section"], r["model"], r["backend"], r["mode"])
        row = rows.setdefault(key, dict(zip(("section", "model", "backend", "mode"), key), merge=None))
        side = "unmerged" if r["merge"] is None else "merged"
        if r["merge"] is not None:
            row["merge"] = r["merge"]
        for field in _COMPARED:
            row[f"{side}_{field}"] = r.get(field)
        if r["merge"] is not None and r.get("round_ratios"):
            row["round_ratios"] = r["round_ratios"]
    for row in rows.values():
        unmerged, merged = row.get("unmerged_images_per_s"), row.get("merged_images_per_s")
        row["merged_over_unmerged"] = merged / unmerged if unmerged and merged else None
        if row.get("round_ratios") and row["merged_over_unmerged"] is not None:
            # timed in alternating rounds: the median of the ratios within rounds (neighbours in time)
            row["merged_over_unmerged"] = statistics.median(row["round_ratios"])
    return list(rows.values())

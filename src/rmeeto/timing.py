"""The one timer behind every images/s the project prints (``rmeeto bench``, ``rmeeto eval --throughput``,
``rmeeto sweep``, the demo report).

    timing = measure(lambda x: model(x), [images], batch_size=128, device=device, protocol=OFFICIAL)
    timing.images_per_s, timing.ms_per_image, timing.median_ms, timing.peak_mem_mb

:func:`measure` calls ``fn(inputs[i % len(inputs)])`` for the warm-up and then for the timed repeats. On CUDA the
repeats are timed with CUDA events: one event pair per repeat (a median and a spread) or, as the official
protocol does, one event pair around all of them (the mean; no per-repeat event records between forwards). On
CPU the host clock times each repeat and the median is used (a CPU shared with other work gives a few very slow
repeats). Peak memory is the CUDA peak allocated over warm-up and repeats (None on CPU).

Protocols are presets of the same timer:

- :data:`OFFICIAL` -- the release's ``main.py --throughput``: 100 warm-up + 30 timed forwards, one aggregate
  event pair on CUDA; on CPU 1 + 3 with the median (enough to compare settings, not a benchmark).
- :data:`BENCH` -- ``rmeeto bench``: 10 warm-up + 50 timed repeats, one event pair each, median and p10-p90.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional, Sequence

import torch

from rmeeto.runtime import resolve_device

__all__ = ["Protocol", "Timing", "OFFICIAL", "BENCH", "measure"]


@dataclass(frozen=True)
class Protocol:
    """How many calls to make and how to time them.

    warmup / repeats: untimed and timed calls on CUDA; cpu_warmup / cpu_repeats: the same on CPU (None = the
    CUDA counts). per_repeat: on CUDA, one event pair per repeat (median and spread) instead of one pair around
    all repeats (their mean). CPU repeats are always timed one by one.
    """

    warmup: int
    repeats: int
    per_repeat: bool = True
    cpu_warmup: Optional[int] = None
    cpu_repeats: Optional[int] = None

    def __post_init__(self):
        for name in ("warmup", "repeats", "cpu_warmup", "cpu_repeats"):
            value = getattr(self, name)
            if value is None and name.startswith("cpu_"):
                continue
            minimum = 1 if name.endswith("repeats") else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")

    def counts(self, device: torch.device) -> tuple[int, int]:
        """(warm-up calls, timed calls) on ``device``."""
        if device.type == "cuda":
            return self.warmup, self.repeats
        return (self.warmup if self.cpu_warmup is None else self.cpu_warmup,
                self.repeats if self.cpu_repeats is None else self.cpu_repeats)

    def with_counts(self, warmup: Optional[int] = None, repeats: Optional[int] = None) -> "Protocol":
        """This protocol with ``warmup`` / ``repeats`` (when given) on every device."""
        changes = {}
        if warmup is not None:
            changes.update(warmup=warmup, cpu_warmup=warmup)
        if repeats is not None:
            changes.update(repeats=repeats, cpu_repeats=repeats)
        return replace(self, **changes)


OFFICIAL = Protocol(warmup=100, repeats=30, per_repeat=False, cpu_warmup=1, cpu_repeats=3)
BENCH = Protocol(warmup=10, repeats=50, per_repeat=True)


@dataclass(frozen=True)
class Timing:
    """The result of :func:`measure`.

    times_ms: milliseconds per call, one entry per timed repeat (a single entry, the mean, when the repeats
    were timed as one aggregate). batch_size: images per call. peak_mem_mb: CUDA peak allocated memory over the
    measurement, None on CPU.
    """

    times_ms: tuple[float, ...]
    batch_size: int
    repeats: int
    warmup: int
    device: str
    peak_mem_mb: Optional[float] = None

    @property
    def median_ms(self) -> float:
        """Median milliseconds per call (the mean when timed as one aggregate)."""
        return statistics.median(self.times_ms)

    def percentile_ms(self, q: float) -> float:
        """The ``q``-quantile (0..1) of the per-call times, nearest rank."""
        s = sorted(self.times_ms)
        return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]

    @property
    def p10_ms(self) -> float:
        return self.percentile_ms(0.1)

    @property
    def p90_ms(self) -> float:
        return self.percentile_ms(0.9)

    @property
    def images_per_s(self) -> float:
        return self.batch_size * 1e3 / self.median_ms

    @property
    def ms_per_image(self) -> float:
        return self.median_ms / self.batch_size


def measure(
    fn: Callable[[Any], Any],
    inputs: Sequence[Any],
    *,
    batch_size: int,
    device: torch.device,
    protocol: Protocol = BENCH,
) -> Timing:
    """Time ``fn`` on ``device``: ``fn(inputs[i % len(inputs)])`` for the protocol's warm-up calls (untimed),
    then for its timed repeats. ``batch_size`` is the number of images one call processes (for images/s).
    ``fn`` runs under whatever context (no_grad, autocast) the caller has entered."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not inputs:
        raise ValueError("inputs is empty: give at least one input for fn")
    device = resolve_device(device)
    cuda = device.type == "cuda"
    warmup, repeats = protocol.counts(device)
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(warmup):
        fn(inputs[i % len(inputs)])
    if cuda:
        torch.cuda.synchronize(device)
        times = _time_cuda(fn, inputs, repeats, protocol.per_repeat, device)
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        name = torch.cuda.get_device_name(device)
    else:
        times = []
        for i in range(repeats):
            t0 = time.perf_counter()
            fn(inputs[i % len(inputs)])
            times.append((time.perf_counter() - t0) * 1e3)
        peak, name = None, "cpu"
    return Timing(tuple(times), batch_size, repeats, warmup, name, peak)


def _time_cuda(fn, inputs, repeats: int, per_repeat: bool, device: torch.device) -> list[float]:
    """Milliseconds per call by CUDA events (the caller has synchronised before the first record)."""
    if per_repeat:
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
        for i, (start, end) in enumerate(events):
            start.record()
            fn(inputs[i % len(inputs)])
            end.record()
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) for start, end in events]
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for i in range(repeats):
        fn(inputs[i % len(inputs)])
    end.record()
    torch.cuda.synchronize(device)
    return [start.elapsed_time(end) / repeats]

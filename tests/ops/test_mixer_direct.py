"""The prepared mixer's direct path (rmeeto.ops.triton.mixer.MixerPlan._call_direct) hands its launchers the
addresses the general plan path hands them as tensors: checked on CPU by running both paths of one plan with
recording launchers, the general path's activations carved from one buffer at the direct path's offsets (so the
two must agree address for address), and the layout's regions checked for alignment, size and overlap. On a GPU,
tests/ops/test_gpu_plan.py checks the bits of whole models with it."""

import pytest
import torch

from rmeeto.ops.triton import mixer as tm
from rmeeto.ops.triton import proj as tp


class _Recorder:
    """Stands in for a Launcher: records the addresses it is called with, through either entry."""

    def __init__(self, log, name):
        self.log, self.name = log, name
        self._direct, self._pre_run_hooks = ("direct",), []

    def __call__(self, *tensors):
        self.log.append((self.name, tuple(a.data_ptr() if isinstance(a, torch.Tensor) else a for a in tensors)))

    def raw(self, *args):
        self.log.append((self.name, args))


def _weights(d_model, di, R, N, K, dtype):
    g = torch.Generator().manual_seed(0)

    def w(*shape, dt=dtype):
        return torch.randn(*shape, generator=g).to(dt)

    return tm.MixerTensors(w(2 * di, d_model), None, w(di, 1, K), w(di), w(di, 1, K), w(di), w(R + 2 * N, di),
                           w(R + 2 * N, di), w(di, R), w(di, R), w(di, dt=torch.float32), w(di, dt=torch.float32),
                           w(di, N, dt=torch.float32), w(di, N, dt=torch.float32), w(di, dt=torch.float32),
                           w(di, dt=torch.float32), w(d_model, di), None)


@pytest.mark.parametrize("batch,length,d_model,R,N,dtype", [
    (2, 197, 192, 12, 16, torch.float16),  # Vim-Ti's widths
    (3, 7, 40, 3, 8, torch.float32),  # odd sizes: regions that end off a 512-byte boundary
    (1, 5, 384, 24, 16, torch.bfloat16),
])
def test_direct_path_passes_the_general_paths_addresses(monkeypatch, batch, length, d_model, R, N, dtype):
    di = 2 * d_model
    n, es = batch * length, dtype.itemsize
    t = _weights(d_model, di, R, N, 4, dtype)
    hidden = torch.randn(batch, length, d_model).to(dtype)
    offsets, total = tm.direct_layout(n, es, di, R, N)
    buffer = torch.empty(total, dtype=torch.uint8)
    shapes = [(batch, length, di), (batch, length, di), (2, batch, length, tp.xdbl_row(R, 2 * N)[1]),
              (2, batch, length, di), (2, batch, length, di)]
    regions = []
    for off, shape in zip(offsets, shapes):
        numel = 1
        for s in shape:
            numel *= s
        regions.append(buffer[off:off + numel * es].view(dtype).view(shape))

    real_empty, queue = torch.empty, []

    def empty(*args, **kwargs):  # the next queued tensor for the plan's activations, a real one after
        return queue.pop(0) if queue else real_empty(*args, **kwargs)

    log = []
    plan = tm.MixerPlan(di, R, N, 0.5)
    plan.inp = False  # in_proj through F.linear (here on CPU)
    plan.conv, plan.proj, plan.scan, plan.out = (_Recorder(log, k) for k in ("conv", "proj", "scan", "out"))
    xz_ptr = []
    real_linear = tm.F.linear

    def linear(*args):
        out = real_linear(*args)
        xz_ptr.append(out.data_ptr())
        return out

    monkeypatch.setattr(tm.F, "linear", linear)
    monkeypatch.setattr(torch, "empty", empty)
    monkeypatch.setattr(tm, "direct_ready", lambda *launchers: False)
    queue[:] = regions
    plan(hidden, t)
    general = list(log)
    assert not queue and [name for name, _ in general] == ["conv", "proj", "scan", "out"]

    log.clear()
    monkeypatch.setattr(tm, "direct_ready", lambda *launchers: True)
    queue[:] = [buffer]
    plan(hidden, t)
    direct = list(log)
    assert not queue and [name for name, _ in direct] == ["conv", "proj", "scan", "out"]
    # in_proj's output moved between the calls: compare its addresses relative to it, all others as they are
    shift = xz_ptr[0] - xz_ptr[1]
    xz_range = range(xz_ptr[1], xz_ptr[1] + n * 2 * di * es)
    for (name, want), (_, got) in zip(general[:3], direct[:3]):
        got = tuple(a + shift if a in xz_range else a for a in got)
        assert got == want, name
    # out: the scan's output and out_proj's weight the same; the result a fresh tensor in both
    assert direct[3][1][:2] == general[3][1][:2]


@pytest.mark.parametrize("n,es,di,R,N", [(128 * 197, 2, 768, 24, 16), (7, 4, 40, 3, 8), (1, 2, 8, 1, 8)])
def test_direct_layout_regions_are_aligned_large_enough_and_apart(n, es, di, R, N):
    offsets, total = tm.direct_layout(n, es, di, R, N)
    needs = [n * di * es, n * di * es, 2 * n * tp.xdbl_row(R, 2 * N)[1] * es, 2 * n * di * es, 2 * n * di * es]
    ends = list(offsets[1:]) + [total]
    for off, end, need in zip(offsets, ends, needs):
        assert off % 512 == 0 and end - off >= need and end - off < need + 512


def test_a_plan_keeps_the_x_dbl_row_it_was_made_with(monkeypatch):
    """The projection kernel's launcher is specialised on B's column in x_dbl's rows: a plan fixes that row when
    made, so turning proj.ALIGN_BC afterwards changes neither its allocation nor its views (a mismatch would have
    the kernel write rows wider than the buffer). New plans take the new setting."""
    monkeypatch.setattr(tp, "ALIGN_BC", True)
    plan = tm.MixerPlan(384, 12, 16, 0.5)
    assert plan.row == (16, 48)
    monkeypatch.setattr(tp, "ALIGN_BC", False)
    assert plan.row == (16, 48) and tm.MixerPlan(384, 12, 16, 0.5).row == (12, 44)
    offsets, total = tm.direct_layout(10, 2, 8, 12, 16, plan.row)
    assert offsets[3] - offsets[2] >= 2 * 10 * 48 * 2
    weights = tuple(range(15))
    _, _, scan, _ = tm.direct_arguments(0, 0, offsets, 10, 2, 8, 12, 16, weights, plan.row)
    assert scan[6] == offsets[2] + 16 * 2 and scan[8] == offsets[2] + 32 * 2  # B_f, C_f at columns 16 and 32
    with pytest.raises(ValueError, match="B's column"):
        tp.spec(100, 384, 12, 32, 44, 12, tp.PROJ_CONFIG, None, bo=40)

"""Host cost of a compiled inference forward without a GPU: the CPU proxy of ``host_proxy_cpu.py`` (fused paths
forced on, every Triton launch a no-op) under ``torch.compile`` (Inductor, CPU), against the same model eager.

    TRITON_INTERPRET=1 PYTHONPATH=src python benchmarks/compile_host_proxy_cpu.py [--img-size 64] [--dispatch]

Prints, for Vim-S unmerged and merged (r=2 every 2 layers; 17 tokens at 64 px), ms per forward eager and compiled
(min and median of 8 alternating rounds of 10 calls) and the host time the prepared launchers take per forward
(``Launcher.__call__``), which shows whether Python inside the ops runs at eager speed under the compiled graph.
GEMMs are a copy of one input column (the output then depends on every op, so Inductor keeps them all).
``--dispatch``: the cost of one call of ``rmeeto::mixer_inference`` (a plain ``torch.library.Library``
definition, as every rmeeto op) against a ``torch.library.custom_op`` of the same kernel and against the kernel
called directly (24 calls, as a forward's mixers).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from host_proxy_cpu import _force_fused_noop_launch


def _rounds(fns: dict, x, rounds: int = 8, calls: int = 10) -> dict:
    res = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                fn(x)
            res[name].append((time.perf_counter() - t0) / calls * 1e3)
    return {k: (round(min(v), 3), round(statistics.median(v), 3)) for k, v in res.items()}


def forwards(img_size: int) -> None:
    import rmeeto
    from rmeeto.merge import MergeConfig
    from rmeeto.ops.triton import _launch

    spent = [0.0]
    call = _launch.Launcher.__call__

    def timed(self, *tensors):
        t0 = time.perf_counter()
        call(self, *tensors)
        spent[0] += time.perf_counter() - t0

    _launch.Launcher.__call__ = timed
    for merged in (False, True):
        m = rmeeto.create_model("vim_small_patch16_224", img_size=img_size).eval().half()
        if merged:
            rmeeto.apply_merge(m, MergeConfig(num_merged=2, interval=2))
        x = torch.randn(1, 3, img_size, img_size).half()
        torch._dynamo.reset()
        c = torch.compile(m)
        with torch.no_grad():
            for _ in range(3):
                m(x), c(x)
            launcher_ms = {}
            for name, fn in (("eager", m), ("compiled", c)):
                spent[0] = 0.0
                for _ in range(10):
                    fn(x)
                launcher_ms[name] = round(spent[0] / 10 * 1e3, 3)
            times = _rounds({"eager": m, "compiled": c}, x)
        print(f"{'merged' if merged else 'unmerged'}: ms per forward (min, median) {times}; launchers' host ms per "
              f"forward {launcher_ms}", flush=True)
    _launch.Launcher.__call__ = call


def dispatch() -> None:
    from rmeeto.models.vim import BiMambaMixer
    from rmeeto.ops.triton import mixer as tmix

    from rmeeto.ops.triton._inductor import KERNELS

    kernel = KERNELS["mixer_inference"]  # the op's own function
    torch.library.custom_op("rmeeto_proxy::mixer", kernel, mutates_args=())
    mixer = BiMambaMixer(384, d_state=16).half()
    h = torch.randn(1, 17, 384).half()
    t = tuple(mixer._plan_tensors())
    assert tmix._mixer_op is torch.ops.rmeeto.mixer_inference.default
    ops = {"direct": kernel, "library": torch.ops.rmeeto.mixer_inference.default,
           "custom_op": torch.ops.rmeeto_proxy.mixer.default}

    def loop(op):
        def run(x):
            for _ in range(24):
                x = op(x, *t, 16, 0.5)
            return x
        return run

    with torch.no_grad():
        fns = {name: loop(op) for name, op in ops.items()}
        for fn in fns.values():
            fn(h)
        print("24 mixer calls, ms (min, median):", _rounds(fns, h), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--dispatch", action="store_true", help="the op registrations' call cost instead")
    a = ap.parse_args()
    _force_fused_noop_launch()
    F.linear = lambda x, w, b=None: x[..., :1].expand(*x.shape[:-1], w.shape[0]).contiguous()
    import rmeeto.ops.selective_scan as ss
    from rmeeto.ops.triton import scan as tscan

    ss._loaded["triton"] = tscan.selective_scan_triton
    dispatch() if a.dispatch else forwards(a.img_size)


if __name__ == "__main__":
    main()

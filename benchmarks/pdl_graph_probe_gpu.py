"""Whether programmatic dependent launch overlaps two kernels inside a CUDA graph, as it does on a stream: kernel A
(one program per SM, each busy for ``--busy-us`` by the global timer, then writing when it ended) then kernel B
(one program per SM writing the global timer on entry and again after ``griddepcontrol.wait``). With PDL, A lets B
launch at its start and B is launched with ``launch_pdl``; without, both are plain launches. Printed per setting
(eager stream, CUDA graph): B's first entry and its first return from the wait, each less A's last end, in us
(median over replays). Under working PDL B enters before A ends (a negative first column) and returns from the wait
just after; without it B enters only after A has ended.

    PYTHONPATH=src python3 benchmarks/pdl_graph_probe_gpu.py [--busy-us 20] [--reps 20]
"""

from __future__ import annotations

import argparse
import statistics

import torch
import triton
import triton.language as tl

from rmeeto.ops.triton._pdl import gdc_launch_dependents, gdc_wait


@triton.jit
def _now():
    return tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64, is_pure=False, pack=1)


@triton.jit
def _busy_kernel(end_ptr, busy_ns, PDL: tl.constexpr):
    if PDL:
        gdc_launch_dependents()
    t0 = _now()
    t = t0
    while t - t0 < busy_ns:
        t = _now()
    tl.store(end_ptr + tl.program_id(0), t)


@triton.jit
def _follow_kernel(enter_ptr, back_ptr, PDL: tl.constexpr):
    t0 = _now()
    if PDL:
        gdc_wait()
    t1 = _now()
    tl.store(enter_ptr + tl.program_id(0), t0)
    tl.store(back_ptr + tl.program_id(0), t1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--busy-us", type=float, default=20.0)
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__, f"{sms} SMs", flush=True)
    end = torch.zeros(sms, dtype=torch.int64, device="cuda")
    enter = torch.zeros_like(end)
    back = torch.zeros_like(end)
    busy = int(a.busy_us * 1000)

    for pdl in (False, True):
        def pair():
            _busy_kernel[(sms,)](end, busy, PDL=pdl)
            opts = {"launch_pdl": True} if pdl else {}
            _follow_kernel[(sms,)](enter, back, PDL=pdl, **opts)

        for _ in range(3):
            pair()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            pair()
        for name, run in (("stream", pair), ("graph", graph.replay)):
            first_in, first_back = [], []
            for _ in range(a.reps):
                run()
                torch.cuda.synchronize()
                last_end = end.max().item()
                first_in.append((enter.min().item() - last_end) / 1000)
                first_back.append((back.min().item() - last_end) / 1000)
            print(f"PDL {'on ' if pdl else 'off'} {name:6s}: B enters {statistics.median(first_in):+7.2f} us, returns "
                  f"from the wait {statistics.median(first_back):+7.2f} us after A's last end", flush=True)


if __name__ == "__main__":
    main()

"""Eager (``model(x)``) speed of unmerged and merged Vim, interleaved, optionally with a kernel switch on and off.

    PYTHONPATH=src python3 benchmarks/eager_ab.py [--models vim_tiny_patch16_224,...] [--switch proj]
        [--rounds 8] [--calls 20] [--batch 128]

On the device hosts an eager forward is host-bound for Vim-Ti and S, and the host's speed drifts by up to 2x
within one process (sessions 10-15). Timing the unmerged model in one block of calls and the merged one in
the next lets that drift decide the ratio. Here every round times each (variant, switch) once, in turn, for
``--calls`` back-to-back calls between one pair of CUDA events; a ratio is taken within each round (merged
against unmerged of the same switch, neighbours in time), and the summary gives the median ratio over rounds
and each configuration's median and best ms per batch. ``--switch op`` (an op of rmeeto.ops.policy) adds the
runs with that op's fused kernel off.
"""

from __future__ import annotations

import argparse
import os

import torch

from rmeeto.ops import policy
from rmeeto.timing import Protocol, measure

from _rounds import models as pair, summary


def _ms(fn, x, calls: int) -> float:
    """ms per call: 3 untimed calls, then ``calls`` back-to-back calls between one pair of CUDA events."""
    protocol = Protocol(warmup=3, repeats=calls, per_repeat=False)
    return measure(fn, [x], batch_size=x.shape[0], device=x.device, protocol=protocol).median_ms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="vim_tiny_patch16_224,vim_small_patch16_224,vim_base_patch16_224")
    ap.add_argument("--switch", default=None, help="an op of rmeeto.ops.policy.OPS to time on and off")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--batch", type=int, default=128)
    a = ap.parse_args()
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, {os.cpu_count()} CPUs; eager fp16, "
          f"batch {a.batch}, {a.calls} calls per timing, {a.rounds} rounds", flush=True)
    switches = (True, False) if a.switch else (True,)
    for name in a.models.split(","):
        x = torch.randn(a.batch, 3, 224, 224, device="cuda").half()
        models = pair(name)
        times = {(v, s): [] for v in models for s in switches}
        with torch.no_grad():
            for _ in range(a.rounds):
                for s in switches:
                    if a.switch:
                        policy.set_fused(a.switch, s)
                    t = {v: _ms(m, x, a.calls) for v, m in models.items()}
                    for v in models:
                        times[(v, s)].append(t[v])
        if a.switch:
            policy.set_fused(a.switch, True)
        for s in switches:
            label = f"{a.switch} {'on' if s else 'off'}" if a.switch else "default"
            print(summary(name, label, times[("unmerged", s)], times[("merged", s)], a.batch), flush=True)
        del models
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

"""Graphed Vim, unmerged and merged, with the projection kernel's session-16 tile rule against the current one
(rmeeto.ops.triton.proj.proj_config), interleaved in one process: the whole-model effect of a tile table.

    PYTHONPATH=src python3 benchmarks/proj_tiles_ab.py [--models vim_small_patch16_224,vim_base_patch16_224]
        [--rounds 5] [--calls 30] [--batch 128]

Each (tile rule, variant) is captured into its own CUDA graph (the tiles are chosen at capture), then every round
times each graph once for ``--calls`` replays between one pair of CUDA events; medians over rounds, and the
merged / unmerged speed ratio within each round.
"""

from __future__ import annotations

import argparse

import torch

from rmeeto.fast import accelerate
from rmeeto.ops import policy
from rmeeto.ops.triton import proj as tp
from rmeeto.timing import Protocol, measure

from _rounds import models, summary


def _session16(rows: int, channels: int) -> dict:
    """Session 16's rule: the large tiles from 128 x 150 rows up to 768 channels, else the default ones."""
    return tp.PROJ_CONFIG_LARGE if rows >= 128 * 150 and channels <= 768 else tp.PROJ_CONFIG


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="vim_small_patch16_224,vim_base_patch16_224")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--batch", type=int, default=128)
    a = ap.parse_args()
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}; graphed fp16, batch {a.batch}, "
          f"{a.calls} replays per timing, {a.rounds} rounds", flush=True)
    current = tp.proj_config
    protocol = Protocol(warmup=3, repeats=a.calls, per_repeat=False)
    for name in a.models.split(","):
        x = torch.randn(a.batch, 3, 224, 224, device="cuda").half()
        fns = {}
        for variant, m in models(name).items():
            for rule, fn in (("session16", _session16), ("current", current)):
                tp.proj_config = fn
                policy.set_fused("plan", True)  # new switches' generation: the mixers make new plans, with these tiles
                g = accelerate(m, "cudagraph")
                g(x)  # captured with this rule's tiles
                fns[(rule, variant)] = g
        tp.proj_config = current
        times = {k: [] for k in fns}
        for _ in range(a.rounds):
            for k, g in fns.items():
                times[k].append(measure(g, [x], batch_size=a.batch, device=x.device, protocol=protocol).median_ms)
        for rule in ("session16", "current"):
            print(summary(name, rule, times[(rule, "unmerged")], times[(rule, "merged")], a.batch), flush=True)
        del fns
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

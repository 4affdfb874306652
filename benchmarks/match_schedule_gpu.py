"""The merging layers of a model's paper schedule one by one: graphed time of the matching alone
(``match_plan``), of the whole merging step (``match_merge_add_norm``: matching, merge, residual add, RMSNorm) and
of the plain residual add + RMSNorm at the same input length, batch 128, fp16 metric / hidden, float32 residual.
The step's cost beyond the plain norm is what a merging layer adds to the forward. ``--ab KEY=A,B``: the matching
and the step with ``MATCH_CONFIG[KEY]`` set to A then B (Python literals), per layer, in one process (the plans must
be equal); more values, or values with commas (tuples), go separated by ";", e.g.
``--ab "large=(128, 128, 32, 8, 2, 64);(128, 128, 32, 8, 3, 64)"``.

    PYTHONPATH=src python3 benchmarks/match_schedule_gpu.py [--models vim_tiny_patch16_224,vim_small_patch16_224]
        [--ab one_tile_min_r=None,0] [--set "large=(128, 128, 32, 16, 2, 64)"]
"""

from __future__ import annotations

import argparse
import ast

import torch

from _match_set import add_set_argument, set_match_config
from bench_merge_gpu import _event_ms, _graphed
from rmeeto.merge import MergeConfig
from rmeeto.ops.norm import add_rms_norm
from rmeeto.ops.triton import merge as mt

WIDTH = {"tiny": 192, "small": 384, "base": 768}


def _merging_layers(cfg, batch: int, C: int):
    """Per merging layer of ``cfg``'s schedule at 197 tokens: (step, L, r, hidden fp16, residual float32, sizes or
    None at the first merge, norm weight fp16), random, seeded by the layer."""
    for s in cfg.schedule(197, 24):
        if not s.merging or s.num_merged == 0:
            continue
        torch.manual_seed(s.layer)
        L = s.tokens_in
        hidden = torch.randn(batch, L, C, device="cuda", dtype=torch.float16)
        residual = torch.randn(batch, L, C, device="cuda")
        size = torch.rand(batch, L, 1, device="cuda") + 1 if s.layer > 2 else None
        w = torch.rand(C, device="cuda", dtype=torch.float16) + 0.5
        yield s, L, s.num_merged, hidden, residual, size, w


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="vim_tiny_patch16_224,vim_small_patch16_224")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--ab", default=None, help="a MATCH_CONFIG entry timed at two values, e.g. one_tile_min_r=None,0")
    add_set_argument(ap, "a MATCH_CONFIG entry set for the whole run (a Python literal), before --ab; repeatable")
    a = ap.parse_args()
    set_match_config(a.set, ap.error)
    if a.ab:
        return ab(a)
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    for name in a.models.split(","):
        C = next(v for k, v in WIDTH.items() if k in name)
        cfg = MergeConfig.paper(name)
        tot = [0.0, 0.0, 0.0]
        print(f"== {name} (C={C}): layer, L -> L - r, match_plan us, merging step us, plain add + norm us, excess")
        for s, L, r, hidden, residual, size, w in _merging_layers(cfg, a.batch, C):
            with torch.no_grad():
                t_match = 1e3 * _event_ms(_graphed(lambda: mt.match_plan(hidden, s.cls_in, r, s.cls_out, True)),
                                          a.reps, 10)
                t_step = 1e3 * _event_ms(_graphed(lambda: mt.match_merge_add_norm(
                    hidden, residual, size, hidden, s.cls_in, r, s.cls_out, True, w, 1e-5)), a.reps, 10)
                t_norm = 1e3 * _event_ms(_graphed(lambda: add_rms_norm(hidden, residual, w, 1e-5)), a.reps, 10)
            for i, v in enumerate((t_match, t_step, t_norm)):
                tot[i] += v
            print(f"  {s.layer:2d}  {L} -> {L - r}  {t_match:6.1f}  {t_step:6.1f}  {t_norm:6.1f}  {t_step - t_norm:+6.1f}",
                  flush=True)
        print(f"  total: match_plan {tot[0]:.1f}, merging steps {tot[1]:.1f}, plain norms {tot[2]:.1f}, "
              f"excess {tot[1] - tot[2]:+.1f} us per forward", flush=True)


def ab(a):
    """Per merging layer: match_plan and the merging step with MATCH_CONFIG[key] at each value (the first value's
    plans are the reference: a value giving other plans is flagged)."""
    key, values = a.ab.split("=", 1)
    values = [ast.literal_eval(v) for v in values.split(";" if ";" in values else ",")]
    found = dict(mt.MATCH_CONFIG)
    for name in a.models.split(","):
        C = next(v for k, v in WIDTH.items() if k in name)
        cfg = MergeConfig.paper(name)
        tot = [[0.0, 0.0] for _ in values]
        print(f"== {name} (C={C}): layer, L -> L - r, then match_plan and step us for {key} = "
              + " | ".join(map(str, values)), flush=True)
        for s, L, r, hidden, residual, size, w in _merging_layers(cfg, a.batch, C):
            row, dests = [], []
            for k, value in enumerate(values):
                mt.MATCH_CONFIG.update(found, **{key: value})
                with torch.no_grad():
                    dests.append(mt.match_plan(hidden, s.cls_in, r, s.cls_out, True)[0].clone())
                    t_match = 1e3 * _event_ms(_graphed(lambda: mt.match_plan(hidden, s.cls_in, r, s.cls_out, True)),
                                              a.reps, 10)
                    t_step = 1e3 * _event_ms(_graphed(lambda: mt.match_merge_add_norm(
                        hidden, residual, size, hidden, s.cls_in, r, s.cls_out, True, w, 1e-5)), a.reps, 10)
                tot[k][0] += t_match
                tot[k][1] += t_step
                row.append(f"{t_match:6.1f} {t_step:6.1f}")
            differ = [str(k) for k in range(1, len(values)) if not torch.equal(dests[0], dests[k])]
            same = f"  PLANS DIFFER (values {', '.join(differ)})" if differ else ""
            print(f"  {s.layer:2d}  {L} -> {L - r}  " + " | ".join(row) + same, flush=True)
        print("  total per forward (match_plan, steps us): "
              + " | ".join(f"{v}: {t[0]:.1f}, {t[1]:.1f}" for v, t in zip(values, tot)), flush=True)
    mt.MATCH_CONFIG.update(found)


if __name__ == "__main__":
    main()

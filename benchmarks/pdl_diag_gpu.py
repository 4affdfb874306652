"""Whether the prepared paths give the general path's bits under programmatic dependent launch, eager and graphed
(session 26, call 1: tests/ops/test_gpu_plan.py::test_plan_gives_the_general_paths_bits failed in a run with
RMEETO_PDL=1; this tool, call 2, found every logit equal with PDL off, on, and on with CUDA_LAUNCH_BLOCKING=1: the
failures were the launch cache's, not PDL's, see RESULTS). Run once per setting (RMEETO_PDL=0|1, optionally
CUDA_LAUNCH_BLOCKING=1): saves the logits of Vim-Ti / S, unmerged and merged, batch 8 and 3, general path and
prepared path, three eager calls each, then a graphed call, to OUT/name.pt; ``--compare A.pt B.pt ...`` prints
which of them equal which.

    RMEETO_PDL=1 PYTHONPATH=src python3 benchmarks/pdl_diag_gpu.py --save out/pdl1.pt
    PYTHONPATH=src python3 benchmarks/pdl_diag_gpu.py --compare out/pdl0.pt out/pdl1.pt
"""

from __future__ import annotations

import argparse

import torch

import rmeeto
from rmeeto.fast import accelerate
from rmeeto.ops import policy


def _model(name, merged):
    torch.manual_seed(0)
    model = rmeeto.create_model(name).cuda().half().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    if merged:
        rmeeto.apply_merge(model, rmeeto.MergeConfig.paper(name))
    return model


def save(path):
    out = {}
    for name in ("vim_tiny_patch16_224", "vim_small_patch16_224"):
        for merged in (False, True):
            model = _model(name, merged)
            for batch in (8, 3):
                torch.manual_seed(batch)
                x = torch.randn(batch, 3, 224, 224, device="cuda").half()
                with torch.no_grad():
                    for plan in (False, True):
                        policy.set_fused("plan", plan)
                        for k in range(3):
                            out[(name, merged, batch, "plan" if plan else "general", k)] = model(x).float().cpu()
                    policy.set_fused("plan", True)
                    out[(name, merged, batch, "graphed", 0)] = accelerate(model, "cudagraph")(x).float().cpu()
            del model
    torch.save(out, path)
    general = {k: v for k, v in out.items() if k[3] == "general" and k[4] == 0}
    for key, ref in general.items():
        diffs = {f"{what}{k}": (out[key[:3] + (what, k)] - ref).abs().max().item()
                 for what, ks in (("general", (1, 2)), ("plan", (0, 1, 2)), ("graphed", (0,))) for k in ks}
        print(key[:3], "max |diff| against the general path's first call:",
              " ".join(f"{w}={d:.3g}" for w, d in diffs.items()), flush=True)


def compare(paths):
    runs = [torch.load(p) for p in paths]
    for key in runs[0]:
        vals = [r[key] for r in runs]
        d = [(v - vals[0]).abs().max().item() for v in vals[1:]]
        if any(x > 0 for x in d):
            print(key, "differs from", paths[0], "by", d)
    print("compared", len(runs[0]), "entries")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--save")
    ap.add_argument("--compare", nargs="+")
    a = ap.parse_args()
    print(torch.cuda.get_device_name(), "PDL", policy.pdl(), flush=True)
    if a.save:
        save(a.save)
    if a.compare:
        compare(a.compare)

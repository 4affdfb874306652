"""Host time of eager forwards with the prepared launches calling Triton's C launch function directly, with
addresses (``RMEETO_DIRECT_LAUNCH``, session 37), against through the launcher's Python layer with tensors (before),
in one process, alternating; then where one prepared block's host time goes on this host. Three variants: "off"
(the switch off: before session 37), "launch" (each launch direct, the mixer plan's general path: session 37's first
change) and "all" (the mixer plan's direct path too: its activations in one allocation, addresses, no views).

    PYTHONPATH=src python3 benchmarks/launch_ab_gpu.py [--models vim_tiny_patch16_224,vim_small_patch16_224]
        [--variants unmerged,merged] [--rounds 4] [--tries 20] [--pieces]

Per model and variant (paper preset, fp16, batch 128, eager): each round times the issue of ``--tries`` forwards
with the GPU idle before each (host_issue_gpu.issue_and_gpu_times) under each variant, in a rotating order; prints
the median issue ms per round, then the medians over rounds. The logits of the variants are compared bit for bit. ``--pieces``:
host us per call, at batch 1 (the GPU idle: kernels of a few us), of a block of Vim-S and its parts, each launch of
its mixer plan alone, with the switch off and on, and of ``torch.empty``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import rmeeto
from host_issue_gpu import issue_and_gpu_times  # (benchmarks/ is the script's folder)
from rmeeto.merge import MergeConfig
from rmeeto.ops import policy
from rmeeto.ops.triton import mixer as tm

VARIANTS = ("off", "launch", "all")
_READY = tm.direct_ready


def set_variant(v: str) -> None:
    policy.set_direct_launch(v != "off")
    tm.direct_ready = _READY if v == "all" else (lambda *launchers: False)


def host_us(fn, reps: int = 400, warm: int = 50) -> float:
    """Best of 5 rounds of host microseconds per call of ``fn()`` (no synchronisation inside a round)."""
    for _ in range(warm):
        fn()
    best = float("inf")
    for _ in range(5):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t0) / reps * 1e6)
    torch.cuda.synchronize()
    return best


def pieces(name: str) -> None:
    m = rmeeto.create_model(name).cuda().eval().half()
    x = torch.randn(1, 3, 224, 224, device="cuda").half()
    blk = m.layers[5]
    seen = {}
    real = type(blk).forward

    def spy(self, h, r, s):
        seen["in"] = (h, r, s)
        return real(self, h, r, s)

    with torch.no_grad():
        m(x)
        type(blk).forward = spy
        m(x)
        type(blk).forward = real
        h, r, s = seen["in"]
        mix = blk.mixer
        plan, tens = mix.plan(h, blk.norm, r)
        ro, normed = plan.add_norm(h, r, blk.norm.weight, blk.norm.eps)
        for v in VARIANTS:
            set_variant(v)
            rows = {
                "block": lambda: blk(h, r, s),
                "mixer.plan (lookup)": lambda: mix.plan(h, blk.norm, r),
                "plan.add_norm": lambda: plan.add_norm(h, r, blk.norm.weight, blk.norm.eps),
                "plan(normed)": lambda: plan(normed, tens),
            }
            u = torch.empty(1, 197, mix.d_inner, device="cuda").half()
            x_half = torch.randn(1, 197, 2 * mix.d_inner, device="cuda").half()[..., :mix.d_inner]  # as in_proj's
            rows["conv launch alone"] = lambda: plan.conv(x_half, tens.conv_w, tens.conv_b, tens.conv_w_b,
                                                          tens.conv_b_b, u, u)
            for label, fn in rows.items():
                print(f"{name} batch 1, {v:6s}: {label:22s} {host_us(fn):8.2f} us")
        set_variant("all")
        empty = host_us(lambda: torch.empty(1, 197, mix.d_inner, device="cuda"))
        print(f"torch.empty(1, 197, {mix.d_inner}) on CUDA: {empty:.2f} us")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="vim_tiny_patch16_224,vim_small_patch16_224")
    ap.add_argument("--variants", default="unmerged,merged")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--tries", type=int, default=20)
    ap.add_argument("--pieces", action="store_true")
    a = ap.parse_args()
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}; eager fp16, batch 128; issue ms")
    from rmeeto.ops.triton import _launch

    print(f"# direct path available on this Triton: {_launch._direct_supported()}")
    if a.pieces:
        pieces("vim_small_patch16_224")
    for name in a.models.split(","):
        for variant in a.variants.split(","):
            m = rmeeto.create_model(name).cuda().eval().half()
            if variant == "merged":
                rmeeto.apply_merge(m, MergeConfig.paper(name))
            x = torch.randn(128, 3, 224, 224, device="cuda").half()
            got, medians = {}, {v: [] for v in VARIANTS}
            with torch.no_grad():
                for v in VARIANTS:
                    set_variant(v)
                    for _ in range(3):
                        got[v] = m(x)
                same = all(torch.equal(got["off"], got[v]) for v in VARIANTS)
                gpus = []
                for r in range(a.rounds):
                    k = r % len(VARIANTS)
                    for v in VARIANTS[k:] + VARIANTS[:k]:
                        set_variant(v)
                        issue, gpu = issue_and_gpu_times(m, x, a.tries)
                        medians[v].append(statistics.median(issue))
                        gpus.append(statistics.median(gpu))
                        print(f"{name} {variant} round {r} {v:6s}: issue {statistics.median(issue):.2f} ms, "
                              f"GPU {statistics.median(gpu):.2f} ms")
            set_variant("all")
            print(f"{name} {variant}: medians over rounds, " + ", ".join(
                f"{v} {statistics.median(medians[v]):.2f} ms" for v in VARIANTS)
                + f" (GPU {statistics.median(gpus):.2f} ms); logits equal bit for bit: {same}")
            del m
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

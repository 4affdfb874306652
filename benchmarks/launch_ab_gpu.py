"""Host time of eager forwards with the prepared launches calling Triton's C launch function directly, with
addresses (``RMEETO_DIRECT_LAUNCH``, session 37), against through the launcher's Python layer with tensors (before),
in one process, alternating; then where one prepared block's host time goes on this host.

    PYTHONPATH=src python3 benchmarks/launch_ab_gpu.py [--models vim_tiny_patch16_224,vim_small_patch16_224]
        [--variants unmerged,merged] [--rounds 4] [--tries 20] [--pieces]

Per model and variant (paper preset, fp16, batch 128, eager): each round times the issue of ``--tries`` forwards
with the GPU idle before each (host_issue_gpu.issue_and_gpu_times) with the switch off and on; prints the median
issue ms per round, then the medians over rounds. The logits of the two are compared bit for bit. ``--pieces``:
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
        for direct in (False, True):
            policy.set_direct_launch(direct)
            rows = {
                "block": lambda: blk(h, r, s),
                "mixer.plan (lookup)": lambda: mix.plan(h, blk.norm, r),
                "plan.add_norm": lambda: plan.add_norm(h, r, blk.norm.weight, blk.norm.eps),
                "plan(normed)": lambda: plan(normed, tens),
            }
            u = torch.empty(1, 197, mix.d_inner, device="cuda").half()
            rows["conv launch alone"] = lambda: plan.conv(normed, tens.conv_w, tens.conv_b, tens.conv_w_b,
                                                          tens.conv_b_b, u, u)
            for label, fn in rows.items():
                print(f"{name} batch 1, direct {'on ' if direct else 'off'}: {label:22s} {host_us(fn):8.2f} us")
        policy.set_direct_launch(True)
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
            got, medians = {}, {False: [], True: []}
            with torch.no_grad():
                for direct in (False, True):
                    policy.set_direct_launch(direct)
                    for _ in range(3):
                        got[direct] = m(x)
                same = torch.equal(got[False], got[True])
                gpus = []
                for r in range(a.rounds):
                    for direct in (False, True)[::1 if r % 2 == 0 else -1]:
                        policy.set_direct_launch(direct)
                        issue, gpu = issue_and_gpu_times(m, x, a.tries)
                        medians[direct].append(statistics.median(issue))
                        gpus.append(statistics.median(gpu))
                        print(f"{name} {variant} round {r} direct {'on ' if direct else 'off'}: issue "
                              f"{statistics.median(issue):.2f} ms, GPU {statistics.median(gpu):.2f} ms")
            policy.set_direct_launch(True)
            print(f"{name} {variant}: medians over rounds, direct off {statistics.median(medians[False]):.2f} ms, "
                  f"on {statistics.median(medians[True]):.2f} ms (GPU {statistics.median(gpus):.2f} ms); logits "
                  f"equal bit for bit: {same}")
            del m
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

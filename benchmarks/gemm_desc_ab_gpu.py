"""Host time of an eager forward with the TMA GEMM's descriptors kept per thread (``tma_gemm.Gemm`` since session 36)
against made anew on every call (before), in one process, alternating.

    PYTHONPATH=src python3 benchmarks/gemm_desc_ab_gpu.py [--models vim_tiny_patch16_224,vim_small_patch16_224]
        [--rounds 4] [--tries 30]

Per model (merged, paper preset, fp16, batch 128, eager): each round times the issue of ``--tries`` forwards with
the GPU idle before each (host_issue_gpu.issue_and_gpu_times) under each variant; prints the median issue ms per
round and variant, then the medians over rounds. The outputs of the two variants are compared bit for bit.
"""

from __future__ import annotations

import argparse
import statistics

import torch

import rmeeto
from host_issue_gpu import issue_and_gpu_times  # (benchmarks/ is the script's folder)
from rmeeto.merge import MergeConfig
from rmeeto.ops.triton import tma_gemm

KEPT = tma_gemm.Gemm.__call__


def made_per_call(self, a, a2, w, c):
    """The launch as before session 36: four descriptors made (and checked) on every call."""
    self.launcher(*tma_gemm.descriptors(a, a2, w, c, self.M, self.meta))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="vim_tiny_patch16_224,vim_small_patch16_224")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--tries", type=int, default=30)
    a = ap.parse_args()
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}; merged, eager fp16, batch 128; issue ms")
    for name in a.models.split(","):
        m = rmeeto.create_model(name).cuda().eval().half()
        rmeeto.apply_merge(m, MergeConfig.paper(name))
        x = torch.randn(128, 3, 224, 224, device="cuda").half()
        got = {}
        with torch.no_grad():
            for variant, call in (("per call", made_per_call), ("kept", KEPT)):
                tma_gemm.Gemm.__call__ = call
                for _ in range(3):
                    got[variant] = m(x)
            same = torch.equal(got["per call"], got["kept"])
            medians = {"per call": [], "kept": []}
            for r in range(a.rounds):
                for variant, call in (("per call", made_per_call), ("kept", KEPT))[::1 if r % 2 == 0 else -1]:
                    tma_gemm.Gemm.__call__ = call
                    issue, gpu = issue_and_gpu_times(m, x, a.tries)
                    medians[variant].append(statistics.median(issue))
                    print(f"{name} round {r} {variant:8s}: issue {statistics.median(issue):.2f} ms, "
                          f"GPU {statistics.median(gpu):.2f} ms")
        tma_gemm.Gemm.__call__ = KEPT
        print(f"{name}: medians over rounds, per call {statistics.median(medians['per call']):.2f} ms, kept "
              f"{statistics.median(medians['kept']):.2f} ms; logits equal bit for bit: {same}")
        del m
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

"""torch.compile of a 16-bit Vim on the GPU, call by call: seconds of each of the first calls at batch 128
(compilation, recompiles), ms per forward at batch 128 with that static graph, then host ms per forward at batch 1
and ms per forward at batch 128 (both through the graph with a dynamic batch that the batch-1 call compiles).

    PYTHONPATH=src python3 benchmarks/compile_probe_gpu.py [--model vim_small_patch16_224] [--variants merged]

Run it with TORCH_LOGS=recompiles to see why a call recompiled. Used to compare source trees (PYTHONPATH).
"""

from __future__ import annotations

import argparse
import time

import torch

import rmeeto
from rmeeto.merge import MergeConfig

from host_profile_gpu import host_ms  # (benchmarks/ is on the path when run as a script)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vim_small_patch16_224")
    ap.add_argument("--variants", default="merged")
    a = ap.parse_args()
    for variant in a.variants.split(","):
        m = rmeeto.create_model(a.model).cuda().eval().half()
        if variant == "merged":
            rmeeto.apply_merge(m, MergeConfig.paper(a.model))
        torch._dynamo.reset()
        c = torch.compile(m)
        x = torch.randn(128, 3, 224, 224, device="cuda").half()
        x1 = x[:1].clone()
        with torch.no_grad():
            firsts = []
            for _ in range(5):
                t0 = time.perf_counter()
                c(x)
                torch.cuda.synchronize()
                firsts.append(time.perf_counter() - t0)
            print(f"{variant}: first calls (s) " + " ".join(f"{t:.2f}" for t in firsts), flush=True)
            static = host_ms(c, x, 10, rounds=3)  # the graph of batch 128 alone (as rmeeto bench runs it)
            print(f"{variant}: batch 128 ms compiled, its static graph {static:.2f}", flush=True)
            c(x1)  # a second batch size: dynamo compiles a graph with a dynamic batch, which serves both after
            host = host_ms(c, x1, 10, rounds=3)
            eager_host = host_ms(m, x1, 10, rounds=3)
            full = host_ms(c, x, 10, rounds=3)
            eager_full = host_ms(m, x, 10, rounds=3)
        print(f"{variant}: batch 1 host ms compiled {host:.2f} / eager {eager_host:.2f}; batch 128 ms compiled (dynamic graph) "
              f"{full:.2f} / eager {eager_full:.2f}", flush=True)


if __name__ == "__main__":
    main()

"""Where a Vim spends its GPU time: top kernels by CUDA time (torch.profiler), unmerged and merged.

    PYTHONPATH=src python benchmarks/profile_gpu.py [--model vim_small_patch16_224] [--batch 128]
        [--what inference,train] [--variants unmerged,merged] [--rows 18]

``inference``: one eager fp16 forward (official protocol). ``train``: one re-training step (student fwd + bwd
under bf16 autocast, teacher fwd, AdamW), as ``rmeeto bench --train`` times it. For each, it prints the wall
time of the profiled call, the sum of GPU kernel time (their difference is GPU idle time: launch gaps, host
work) and the kernels that take the most time.
"""

import argparse
import os
import time

import torch
from torch.profiler import ProfilerActivity, profile

import rmeeto
from rmeeto.bench import make_train_step


def inference_step(name: str, merged: bool, batch: int):
    model = rmeeto.create_model(name).cuda().half().eval()
    if merged:
        rmeeto.apply_merge(model, rmeeto.MergeConfig.paper(name))
    x = torch.randn(batch, 3, 224, 224, device="cuda", dtype=torch.half)

    @torch.no_grad()
    def step():
        model(x)

    return step


def train_step(name: str, merged: bool, batch: int):
    graphs = os.environ.get("RMEETO_TRAIN_GRAPH", "1") != "0"
    step, batches = make_train_step(name, rmeeto.MergeConfig.paper(name) if merged else None, batch_size=batch,
                                    graphs=graphs)
    return lambda: step(batches[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vim_small_patch16_224")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--what", default="inference,train")
    ap.add_argument("--variants", default="unmerged,merged")
    ap.add_argument("--rows", type=int, default=18)
    args = ap.parse_args()
    for what in args.what.split(","):
        for variant in args.variants.split(","):
            make = {"inference": inference_step, "train": train_step}[what]
            step = make(args.model, variant == "merged", args.batch)
            for _ in range(3):
                step()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            step()
            torch.cuda.synchronize()
            wall_plain = (time.perf_counter() - t0) * 1e3
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                step()
                torch.cuda.synchronize()
            events = prof.key_averages()
            gpu_ms = sum(e.self_device_time_total for e in events) / 1e3
            n_kernels = sum(e.count for e in events if e.self_device_time_total > 0)
            print(f"\n# {args.model} {variant} {what}, batch {args.batch}, {torch.cuda.get_device_name()}: "
                  f"wall {wall_plain:.2f} ms (unprofiled), GPU kernels {gpu_ms:.2f} ms in {n_kernels} launches")
            print(events.table(sort_by="self_device_time_total", row_limit=args.rows, max_name_column_width=70))
            del step
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

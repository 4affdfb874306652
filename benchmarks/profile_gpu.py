"""Where a Vim forward spends its GPU time: top kernels by CUDA time (torch.profiler), one eager forward.

    PYTHONPATH=src python benchmarks/profile_gpu.py [--model vim_small_patch16_224] [--merged] [--batch 128]
"""

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

import rmeeto


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vim_small_patch16_224")
    ap.add_argument("--merged", action="store_true")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rows", type=int, default=18)
    args = ap.parse_args()
    model = rmeeto.create_model(args.model).cuda().half().eval()
    if args.merged:
        rmeeto.apply_merge(model, rmeeto.MergeConfig.paper(args.model))
    x = torch.randn(args.batch, 3, 224, 224, device="cuda", dtype=torch.half)
    with torch.no_grad():
        for _ in range(3):
            model(x)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            model(x)
            torch.cuda.synchronize()
    print(f"# {args.model} merged={args.merged} batch {args.batch} fp16 eager, {torch.cuda.get_device_name()}")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()

"""``rmeeto bench``: inference (and training-step) throughput of unmerged vs merged models, one run, one card."""

from __future__ import annotations

import argparse
import json
import math

from rmeeto.backbones import is_vit_name
from rmeeto.cli import CLIError
from rmeeto.cli._merge_args import add_merge_arguments, merge_config_from_args
from rmeeto.cli._types import nonneg_int, positive_int
from rmeeto.runtime import DTYPES

HELP = "throughput/latency of unmerged vs merged models (inference, training step), one run on one device"
DESCRIPTION = """\
Measure images/s of each MODEL unmerged and merged in one run on one device: warm-up, then many timed repeats
(CUDA events on GPU), median and 10-90% spread, peak memory. Inference follows the official protocol (random
batch of 128 at 224px, fp16 weights and inputs, eval, no_grad) and uses the fast path (CUDA graphs) unless
--mode says otherwise. --train also times a re-training step (merged student forward+backward with the
unmerged teacher's forward, bf16 autocast, AdamW). --compare repeats everything for every scan backend
available on the device. Without merge flags, --preset paper is used for the merged row.
Video models (videomamba_*_f8) get random clips [batch, 3, frames, H, W]; their images/s are clips/s.

examples:
  rmeeto bench vim_small_patch16_224                              # unmerged vs paper-merged, fp16, batch 128
  rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224 --json bench.json
  rmeeto bench vim_small_patch16_224 -r 11 --train --batch-size 128
  rmeeto bench vim_small_patch16_224 --compare --mode eager
  rmeeto bench vim_test_patch4_16 --device cpu --batch-size 8 --repeats 5 --dtype fp32
  rmeeto bench --data /data/imagenet/train                         # the input pipeline alone (= bench-data)
  rmeeto bench videomamba_small_patch16_224_f8 --batch-size 32          # unmerged vs r=88, clips/s
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="*", metavar="MODEL", help="registered model names")
    parser.add_argument("--data", metavar="DIR", default=None,
                        help="instead of models, time the input pipeline alone over the image folder DIR (CPU "
                             "workers at 1..N and the GPU path, with --batch-size and --device): the same as "
                             "'rmeeto bench-data DIR', whose help lists the other options")
    add_merge_arguments(parser)
    g = parser.add_argument_group("measurement")
    g.add_argument("--batch-size", type=positive_int, default=128)
    g.add_argument("--img-size", type=positive_int, default=None, help="input resolution (default: the model's)")
    g.add_argument("--dtype", choices=tuple(DTYPES), default="fp16",
                   help="inference dtype (default fp16; fp16 needs a CUDA device)")
    g.add_argument("--mode", choices=("auto", "eager", "cudagraph", "compile", "compile+cudagraph"), default="auto",
                   help="inference path: auto = CUDA graphs on GPU, eager on CPU; the training step uses CUDA "
                        "graphs with auto/cudagraph, else runs eagerly")
    g.add_argument("--backend", default="auto", help="scan backend (auto, chunked, reference, triton, mamba_ssm)")
    g.add_argument("--compare", action="store_true", help="run every scan backend available on the device")
    g.add_argument("--warmup", type=nonneg_int, default=10)
    g.add_argument("--repeats", type=positive_int, default=50)
    g.add_argument("--train", action="store_true", help="also time a re-training step (bf16, teacher)")
    g.add_argument("--train-repeats", type=positive_int, default=10)
    g.add_argument("--no-inference", action="store_true", help="only the training step")
    g.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cuda:N or cpu")
    parser.add_argument("--json", metavar="FILE", help="also write all results as JSON")


def _fmt(r: dict, base: float | None) -> str:
    speed = f"{r['images_per_s'] / base:.2f}x" if base else "1.00x"
    merge = "unmerged" if r["merge"] is None else f"r={r['merge']['num_merged']}"
    peak = "-" if math.isnan(r["peak_mem_mb"]) else f"{r['peak_mem_mb']:.0f}"
    return (f"{r['model']:<24} {merge:<10} {r['backend']:<10} {r['images_per_s']:>10.1f} {speed:>7} "
            f"{r['ms_median']:>9.2f} {r['ms_p10']:>8.2f}-{r['ms_p90']:<8.2f} {peak:>8}")


HEADER = (f"{'model':<24} {'merge':<10} {'backend':<10} {'images/s':>10} {'speedup':>7} "
          f"{'ms/batch':>9} {'p10-p90 ms':>17} {'peak MB':>8}")


def _run_data(args: argparse.Namespace) -> int:
    """``rmeeto bench --data DIR``: 'rmeeto bench-data DIR' with this command's batch size and device."""
    from rmeeto.cli import bench_data

    parser = argparse.ArgumentParser(prog="rmeeto bench --data")
    bench_data.add_arguments(parser)
    argv = [args.data, "--batch-size", str(args.batch_size), "--device", args.device]
    if args.json:
        argv += ["--json", args.json]
    return bench_data.run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    import torch

    if args.data is not None:
        if args.models:
            raise CLIError("give MODEL names (model throughput) or --data DIR (input pipeline), not both")
        return _run_data(args)
    if not args.models:
        raise CLIError("give at least one MODEL (see 'rmeeto models'), or --data DIR to time the input pipeline")

    from rmeeto.bench import bench_inference, bench_train_step
    from rmeeto.cli.eval import check_model, resolve_device, user_errors
    from rmeeto.ops.selective_scan import available_backends
    from rmeeto.runtime import resolve_dtype

    device = resolve_device(args.device)
    cpu = device.type == "cpu"
    if args.batch_size < 1 or args.repeats < 1:
        raise CLIError("--batch-size and --repeats must be >= 1")
    if args.warmup < 0 or args.train_repeats < 1:
        raise CLIError("--warmup must be >= 0 and --train-repeats >= 1")
    with user_errors("--dtype: "):
        resolve_dtype(args.dtype, device)
    for name in args.models:
        check_model(name)
    train_dtype = "fp32" if cpu else "bf16"
    backends = available_backends(device) if args.compare else [args.backend]
    if args.compare:
        backends = [b for b in backends if b != "reference" or cpu]  # the reference is per-step slow
    dev_name = "cpu" if cpu else torch.cuda.get_device_name(device)
    print(f"# device: {dev_name}; batch {args.batch_size}; torch {torch.__version__}")

    results = []
    for section in (["inference"] if not args.no_inference else []) + (["train"] if args.train else []):
        print(f"\n## {section} ({args.dtype if section == 'inference' else train_dtype})")
        print(HEADER)
        for name in args.models:
            merged_cfg = merge_config_from_args(args, name)
            if merged_cfg is None:
                from rmeeto.merge import MergeConfig

                merged_cfg = MergeConfig.paper(name)
            # a ViT has no scan kernel to compare: one pass with "auto"
            for backend in (["auto"] if is_vit_name(name) else backends):
                base = None
                for cfg in (None, merged_cfg):
                    if section == "inference":
                        r = bench_inference(
                            name, cfg, batch_size=args.batch_size, img_size=args.img_size, dtype=args.dtype,
                            mode=args.mode, backend=backend, warmup=args.warmup, repeats=args.repeats, device=device,
                        )
                    else:
                        r = bench_train_step(
                            name, cfg, batch_size=args.batch_size, img_size=args.img_size,
                            dtype=train_dtype, backend=backend,
                            warmup=min(3, args.warmup), repeats=args.train_repeats, device=device,
                            graphs=args.mode in ("auto", "cudagraph"),
                        )
                    r["section"] = section
                    r["speedup_vs_unmerged"] = r["images_per_s"] / base if base else 1.0
                    print(_fmt(r, base), flush=True)
                    base = base or r["images_per_s"]
                    results.append(r)
                    if not cpu:
                        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": dev_name, "torch": torch.__version__, "results": results}, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0

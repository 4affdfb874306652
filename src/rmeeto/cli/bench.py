"""``rmeeto bench``: inference (and training-step) throughput of unmerged vs merged models, one run, one card."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Optional

from rmeeto.backbones import is_vit_name
from rmeeto.cli import CLIError
from rmeeto.cli._merge_args import add_merge_arguments, merge_config_from_args
from rmeeto.argtypes import comma_choices, comma_nonneg_ints, nonneg_int, positive_int
from rmeeto.runtime import DTYPES

HELP = "throughput/latency of unmerged vs merged models (inference, training step), eager/compiled/graphed"
DESCRIPTION = """\
Measure images/s of each MODEL unmerged and merged in one run on one device, in each execution mode: warm-up,
then many timed repeats (CUDA events on GPU; for inference both models of a mode are built first and timed in
--rounds alternating rounds, the ratio being the median of the rounds' ratios, so a host whose speed drifts
slows both alike), median and 10-90% spread, peak memory, the first call's time
(compilation, graph capture) and, on CUDA, the launches of one forward (kernels, copies and fills the GPU ran,
counted with torch.profiler; '-' on CPU). Inference follows the official protocol (random batch of 128 at
224px, fp16 weights and inputs, eval, no_grad). --train also times a re-training step (merged student
forward+backward with the unmerged teacher's forward, bf16 autocast, AdamW) in the same modes; its launches
are those of one whole step. One table row per mode: unmerged and merged images/s, their ratio, ms p10-p90,
launches, first-call seconds. A row whose rounds' ratios differ by more than 10% gets a note under it naming
what moves such rounds in its mode (the host in eager and compiled modes, the GPU's speed in graphed ones). A
mode that fails (torch.compile erroring in Inductor, say) is reported in its row as "failed: <reason>" and the
other modes still run; the exit status is 1 when every run failed.

modes (--modes, comma-separated; default eager,compile,cudagraph on CUDA, eager on CPU):
  eager              model(x) as it is
  compile            torch.compile(model), default mode (--compile-backend picks the backend); for --train
                     the student's and the teacher's forward (and the student's backward) compiled
  cudagraph          the forward replayed from a CUDA graph; for --train the student's forward+backward and
                     the teacher's forward, as 'rmeeto retrain' does on one GPU
  compile+cudagraph  torch.compile(model, mode="reduce-overhead") (inference only)
--mode M runs the single mode M (auto = cudagraph on GPU, eager on CPU).

--compare repeats everything for every scan backend available on the device. Without merge flags, --preset
paper is used for the merged row. Video models (videomamba_*_f8) get random clips [batch, 3, frames, H, W];
their images/s are clips/s.

examples:
  rmeeto bench vim_small_patch16_224                              # eager, compile, cudagraph; unmerged vs merged
  rmeeto bench vim_tiny_patch16_224 vim_small_patch16_224 vim_base_patch16_224 --json bench.json
  rmeeto bench vim_small_patch16_224 --train --no-inference --modes eager,compile,cudagraph
  rmeeto bench vim_small_patch16_224 --modes eager,compile --compile-backend aot_eager   # Inductor left out
  rmeeto bench vim_small_patch16_224 --compare --mode eager
  rmeeto bench vim_test_patch4_16 --device cpu --batch-size 8 --repeats 5 --dtype fp32
  rmeeto bench --data /data/imagenet/train --workers 4,8,16        # the input pipeline alone (= bench-data)
  rmeeto bench videomamba_small_patch16_224_f8 --batch-size 32          # unmerged vs r=88, clips/s
"""

# rmeeto.bench.INFERENCE_MODES (a test keeps them equal): spelled out here so that building the parser does not
# import torch
MODES = ("eager", "compile", "cudagraph", "compile+cudagraph")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="*", metavar="MODEL", help="registered model names")
    parser.add_argument("--data", metavar="DIR", default=None,
                        help="instead of models, time the input pipeline alone over the image folder DIR (CPU "
                             "workers at 1..N and the GPU path, with --batch-size and --device): the same as "
                             "'rmeeto bench-data DIR', whose help lists the other options")
    d = parser.add_argument_group("input pipeline (with --data; 'rmeeto bench-data --help' has the rest)")
    d.add_argument("--workers", type=comma_nonneg_ints, metavar="N,N,...", default=None,
                   help="CPU worker counts to time, comma-separated (default 1,2,4,... up to the core count)")
    d.add_argument("--gpu-workers", type=nonneg_int, default=None, metavar="N",
                   help="file readers for the GPU path (default: max)")
    d.add_argument("--batches", type=positive_int, default=None, metavar="N",
                   help="timed batches per row (default 10 x workers, at least 20)")
    add_merge_arguments(parser)
    g = parser.add_argument_group("measurement")
    g.add_argument("--batch-size", type=positive_int, default=128)
    g.add_argument("--img-size", type=positive_int, default=None, help="input resolution (default: the model's)")
    g.add_argument("--dtype", choices=tuple(DTYPES), default="fp16",
                   help="inference dtype (default fp16; fp16 needs a CUDA device)")
    g.add_argument("--modes", type=comma_choices(MODES), default=None, metavar="M,M,...",
                   help=f"execution modes, a comma-separated subset of {','.join(MODES)} (default: "
                        "eager,compile,cudagraph on CUDA, eager on CPU)")
    g.add_argument("--mode", choices=("auto", *MODES), default=None,
                   help="a single mode (auto = cudagraph on GPU, eager on CPU); the same as --modes M")
    g.add_argument("--compile-backend", default="inductor", metavar="NAME",
                   help="torch.compile backend of the compile modes (default inductor; e.g. aot_eager)")
    g.add_argument("--backend", default="auto", help="scan backend (auto, chunked, reference, triton, mamba_ssm)")
    g.add_argument("--compare", action="store_true", help="run every scan backend available on the device")
    g.add_argument("--warmup", type=nonneg_int, default=10)
    g.add_argument("--repeats", type=positive_int, default=50)
    g.add_argument("--rounds", type=positive_int, default=5,
                   help="inference: build the unmerged and merged model of a mode, then time them in this many "
                        "alternating rounds of repeats/rounds calls each; the ratio is the median of the rounds' "
                        "ratios (a drifting host slows both alike). 1: all of the unmerged model's repeats, "
                        "then the merged model's (default 5)")
    g.add_argument("--train", action="store_true", help="also time a re-training step (bf16, teacher)")
    g.add_argument("--train-repeats", type=positive_int, default=10)
    g.add_argument("--no-inference", action="store_true", help="only the training step")
    g.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cuda:N or cpu")
    parser.add_argument("--json", metavar="FILE", help="also write all results as JSON")


def _num(value, fmt: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def _pair(row: dict, field: str, fmt: str) -> str:
    return f"{_num(row.get('unmerged_' + field), fmt)}/{_num(row.get('merged_' + field), fmt)}"


def _spread(row: dict, side: str) -> str:
    lo, hi = row.get(f"{side}_ms_p10"), row.get(f"{side}_ms_p90")
    return "-" if lo is None or hi is None else f"{lo:.2f}-{hi:.2f}"


def _fmt(row: dict) -> str:
    """One table line of a :func:`rmeeto.bench.compare_modes` row; a failed run's error closes the line."""
    merge = f"r={row['merge']['num_merged']}" if row["merge"] else "-"
    ratio = _num(row["merged_over_unmerged"], ".2f") + ("x" if row["merged_over_unmerged"] else "")
    line = (f"{row['model']:<24} {merge:<8} {row['backend']:<9} {row['mode']:<17} "
            f"{_num(row.get('unmerged_images_per_s'), ',.1f'):>13} {_num(row.get('merged_images_per_s'), ',.1f'):>13} "
            f"{ratio:>7} {_spread(row, 'unmerged'):>15} {_spread(row, 'merged'):>15} {_pair(row, 'launches', 'd'):>11} "
            f"{_pair(row, 'first_call_s', '.1f'):>11}")
    errors = {side: row.get(f"{side}_error") for side in ("unmerged", "merged")}
    if errors["unmerged"] and errors["unmerged"] == errors["merged"]:
        return f"{line}  {errors['unmerged']}"
    return line + "".join(f"  {side} {err}" for side, err in errors.items() if err)


# rounds whose merged / unmerged ratios differ by more than this factor get a note under their row
ROUNDS_DISAGREE = 1.10


def rounds_note(row: dict, cuda: bool = True) -> Optional[str]:
    """A line to print under a :func:`rmeeto.bench.compare_modes` row whose alternating rounds disagree (the
    largest within-round ratio over ROUNDS_DISAGREE times the smallest), saying what moves such rounds in its mode;
    None where they agree or there is one round. On CUDA, eager and compiled forwards launch every kernel from
    Python, so a host that slows for a while stalls the GPU in some rounds; a graph's rounds move only with the GPU.
    ``cuda`` False (a CPU run): the machine's own speed."""
    ratios = [r for r in row.get("round_ratios") or () if r]
    if len(ratios) < 2 or max(ratios) <= ROUNDS_DISAGREE * min(ratios):
        return None
    spread = f"{min(ratios):.2f}-{max(ratios):.2f}x over {len(ratios)} rounds"
    if not cuda:
        why = "the machine's speed moved between rounds (other work on it)"
    elif "cudagraph" in row["mode"]:
        why = "the GPU's speed moved between rounds (e.g. its clock under a power cap)"
    else:
        why = ("the host fell behind the GPU in some rounds (this mode launches every kernel from Python); "
               "--modes cudagraph replays them without host work")
    return f"#   {row['model']} {row['mode']}: the rounds disagree ({spread}): {why}"


HEADER = (f"{'model':<24} {'merge':<8} {'backend':<9} {'mode':<17} {'images/s unm':>13} {'images/s mer':>13} "
          f"{'mer/unm':>7} {'unm ms p10-p90':>15} {'mer ms p10-p90':>15} {'launches':>11} {'1st call s':>11}")


# options that only the input-pipeline benchmark (--data) reads
DATA_ONLY = ("workers", "gpu_workers", "batches")


def _run_data(args: argparse.Namespace) -> int:
    """``rmeeto bench --data DIR``: 'rmeeto bench-data DIR' with this command's batch size, device, image size
    (when given) and input-pipeline options."""
    from rmeeto.cli import bench_data

    parser = argparse.ArgumentParser(prog="rmeeto bench --data")
    bench_data.add_arguments(parser)
    data_args = parser.parse_args([args.data])  # bench-data's defaults, then what this command was given
    data_args.batch_size, data_args.device = args.batch_size, args.device
    for name in (*DATA_ONLY, "img_size", "json"):
        if getattr(args, name) is not None:
            setattr(data_args, name, getattr(args, name))
    return bench_data.run(data_args)


def run(args: argparse.Namespace) -> int:
    import torch

    data_only = ["--" + name.replace("_", "-") for name in DATA_ONLY if getattr(args, name) is not None]
    if data_only and args.data is None:
        raise CLIError(f"{', '.join(data_only)} time the input pipeline: give --data DIR with them")
    if args.data is not None:
        if args.models:
            raise CLIError("give MODEL names (model throughput) or --data DIR (input pipeline), not both")
        return _run_data(args)
    if not args.models:
        raise CLIError("give at least one MODEL (see 'rmeeto models'), or --data DIR to time the input pipeline")

    from rmeeto.bench import bench_modes, compare_modes
    from rmeeto.cli.eval import check_model, check_output_file, resolve_device, user_errors
    from rmeeto.ops.selective_scan import BACKENDS, available_backends
    from rmeeto.runtime import resolve_dtype

    for name in args.models:
        check_model(name)
    device = resolve_device(args.device)
    cpu = device.type == "cpu"
    with user_errors("--dtype: "):
        resolve_dtype(args.dtype, device)
    if not args.compare and args.backend != "auto" and args.backend not in available_backends(device):
        known = ", ".join(["auto", *BACKENDS])
        raise CLIError(f"--backend {args.backend}: not a scan backend (choose from {known})"
                       if args.backend not in BACKENDS else
                       f"--backend {args.backend} cannot run on {device} here (available: "
                       f"{', '.join(['auto', *available_backends(device)])})")
    modes = _modes(args, device)
    if args.json:
        check_output_file(args.json, "--json")
    train_dtype = "fp32" if cpu else "bf16"
    backends = available_backends(device) if args.compare else [args.backend]
    if args.compare:
        backends = [b for b in backends if b != "reference" or cpu]  # the reference is per-step slow
    dev_name = "cpu" if cpu else torch.cuda.get_device_name(device)
    print(f"# device: {dev_name}; batch {args.batch_size}; torch {torch.__version__}; modes {','.join(modes)}")

    results = []

    def show(result: dict) -> None:
        """Print a mode's row as soon as its merged run ends, and keep the JSON file current (a run cut short
        by a time limit still leaves every finished row)."""
        results.append(result)
        if result["merge"] is not None:
            row = compare_modes(results[-2:])[0]
            print(_fmt(row), flush=True)
            note = rounds_note(row, cuda=not cpu)
            if note:
                print(note, flush=True)
            if args.json:
                _write_json(args, dev_name, modes, results)

    for section in (["inference"] if not args.no_inference else []) + (["train"] if args.train else []):
        print(f"\n## {section} ({args.dtype if section == 'inference' else train_dtype}); launches and first call: "
              f"unmerged/merged")
        print(HEADER)
        for name in args.models:
            merged_cfg = merge_config_from_args(args, name)
            if merged_cfg is None:
                from rmeeto.merge import MergeConfig

                merged_cfg = MergeConfig.paper(name)
            if section == "inference":
                settings = dict(img_size=args.img_size, dtype=args.dtype, warmup=args.warmup, repeats=args.repeats)
            else:
                settings = dict(img_size=args.img_size, dtype=train_dtype, warmup=min(3, args.warmup),
                                repeats=args.train_repeats)
            # a ViT has no scan kernel to compare: one pass with "auto"
            for backend in (["auto"] if is_vit_name(name) else backends):
                bench_modes(name, merged_cfg, modes=modes, train=section == "train", on_result=show, device=device,
                            rounds=args.rounds if section == "inference" else 1,
                            batch_size=args.batch_size, backend=backend, compile_backend=args.compile_backend,
                            **settings)
    failed = sum(1 for r in results if r["error"])
    if failed:
        print(f"\n# {failed} of {len(results)} runs failed (see their rows)")
    if args.json:
        _write_json(args, dev_name, modes, results)
        print(f"\nwrote {args.json}")
    return 1 if results and failed == len(results) else 0  # nothing measured is a failure


def _write_json(args: argparse.Namespace, dev_name: str, modes: list[str], results: list[dict]) -> None:
    import torch

    from rmeeto.bench import compare_modes
    from rmeeto.cli.eval import write_file_atomic

    doc = {"device": dev_name, "torch": torch.__version__, "modes": modes, "compile_backend": args.compile_backend,
           "results": results, "table": compare_modes(results)}
    write_file_atomic(Path(args.json), json.dumps(doc, indent=2) + "\n", "--json")


def _modes(args: argparse.Namespace, device) -> list[str]:
    """The modes to run: --modes, --mode (one), or the device's default; checked against the device and
    --train before anything slow."""
    from rmeeto.bench import TRAIN_MODES, default_modes, resolve_mode
    from rmeeto.cli.eval import user_errors

    if args.mode is not None and args.modes is not None:
        raise CLIError("give --modes (several) or --mode (one), not both")
    if args.mode is not None:
        modes = [args.mode]
    else:
        modes = list(args.modes or default_modes(device))
    with user_errors():
        modes = list(dict.fromkeys(resolve_mode(m, device) for m in modes))
    if args.train and "compile+cudagraph" in modes:
        raise CLIError(f"--train runs the modes {', '.join(TRAIN_MODES)}; compile+cudagraph is inference-only")
    if any("compile" in m for m in modes) and args.compile_backend != "inductor":
        import torch._dynamo

        if args.compile_backend not in torch._dynamo.list_backends(exclude_tags=()):
            raise CLIError(f"--compile-backend {args.compile_backend!r} is not a torch.compile backend; choose "
                           f"from {', '.join(torch._dynamo.list_backends())}")
    return modes

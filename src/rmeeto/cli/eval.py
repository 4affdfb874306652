"""``rmeeto eval``: training-free accuracy of a (merged) model, with tokens per layer, GFLOPs and speed.

The helpers here (input checks, device/AMP parsing, loader and model building) are shared with
``rmeeto sweep`` and ``rmeeto visualize``; each is a thin wrapper that turns the library's errors
(:mod:`rmeeto.evaluate`, :mod:`rmeeto.runtime`) into one-line CLI errors.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Optional

from rmeeto._files import write_atomic
from rmeeto.backbones import num_tokens_of
from rmeeto.cli import CLIError
from rmeeto.cli._merge_args import add_merge_arguments, merge_config_from_args
from rmeeto.argtypes import device_name, positive_int, worker_count
from rmeeto.runtime import DTYPES

HELP = "top-1/top-5 of a model (merged or not) on digits, an image folder or video clips, with GFLOPs and speed"
DESCRIPTION = """\
Evaluate MODEL (a registered name, see 'rmeeto models') without any training: build it, load --checkpoint
(weights only), apply the merge flags, and score it on --data. Prints top-1/top-5, the token count each layer
processes (measured on one image), GFLOPs by the paper's formula and by a true count, and images/s of the
evaluation loop (data loading included). --throughput adds the official speed protocol (random input, timed
forwards only). Without --checkpoint the model has random weights (useful to check a setup).

Without merge flags, a checkpoint written by 'rmeeto retrain' (or 'rmeeto demo') is merged as it was trained
(its stored merge config; '-r 0' evaluates it unmerged); any other model is evaluated unmerged.

--data is 'digits' (the embedded 8x8 digits set, upscaled to the model's input size; its val split) or an
image folder: DIR/val/<class>/<image> (or DIR/<class>/<image>), e.g. ImageNet's validation set. Unreadable
images are skipped with a warning.

Video models (videomamba_*_f8, see 'rmeeto models') read a clip folder: --data DIR holding DIR/val.csv (or
val.txt), one 'path label' line per video, paths relative to DIR, separator ' ', ',' or tab (found from the
first line; the official Kinetics lists work as they are). One centre clip of segment-middle frames per video;
--test-views scores the official 12 views instead (4 clips x 3 crops, softmax averaged; DIR/test.csv if present,
else the val list). Unreadable or too-short videos are skipped and counted.

examples:
  rmeeto eval vim_digits_patch4_32 --checkpoint out/demo/retrain/best.pth          # as re-trained
  rmeeto eval vim_digits_patch4_32 --checkpoint out/demo/teacher/best.pth -r 4 --json out/eval.json
  rmeeto eval vim_small_patch16_224 --checkpoint vim_s_midclstok_80p5acc.pth --data /data/imagenet \\
      --preset paper --amp bf16 --batch-size 256 --workers 8 --throughput
  rmeeto eval vim_tiny_patch16_224 --checkpoint vim_t_midclstok_76p1acc.pth --data /data/imagenet \\
      -r 5 --final-tokens none --limit 5000
  rmeeto eval videomamba_small_patch16_224_f8 --checkpoint videomamba_s16_k400_f8_res224.pth \\
      --data /data/k400 --preset paper --test-views --batch-size 4 --amp bf16
"""

AMP_CHOICES = ("none", *(name for name in DTYPES if name != "fp32"))  # rmeeto.runtime names; none = fp32


# ============================================================================================ shared helpers
def add_model_data_arguments(parser: argparse.ArgumentParser, data: bool = True) -> None:
    """MODEL, --checkpoint, --data and the run options shared by eval and sweep."""
    parser.add_argument("model", metavar="MODEL", help="registered model name (see 'rmeeto models')")
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="weights (.pth or .safetensors; loaded weights-only); default: random init")
    parser.add_argument("--ema", action="store_true", help="use the checkpoint's 'model_ema' weights")
    if data:
        parser.add_argument("--data", default="digits", metavar="digits|PATH",
                            help="'digits' (embedded, default) or an image folder DIR[/val]/<class>/<image>; "
                                 "for a video model a clip folder DIR with val.csv ('path label' lines)")
        parser.add_argument("--limit", type=positive_int, default=None, metavar="N",
                            help="score only N images (videos), spread evenly over the set")
        parser.add_argument("--batch-size", type=positive_int, default=64, metavar="N",
                            help="evaluation batch size (default 64)")
        parser.add_argument("--workers", type=worker_count, default=2, metavar="N",
                            help="data-loading processes (default 2)")
    parser.add_argument("--device", type=device_name, default="auto",
                        help="auto (cuda if available, default), cpu, cuda or cuda:N")
    parser.add_argument("--amp", choices=AMP_CHOICES, default="none",
                        help="autocast dtype for the forward (default none = float32)")


@contextlib.contextmanager
def user_errors(prefix: str = ""):
    """Turn the library's ValueErrors (CheckpointError and DataError included) into one-line CLIErrors."""
    try:
        yield
    except ValueError as exc:
        raise CLIError(f"{prefix}{exc}") from None


def check_output_file(path: str, flag: str) -> Path:
    """Fail early (before anything slow) when ``path`` cannot be written: it is a folder, lies below a file,
    or its nearest existing folder refuses a new file (read-only, full). Creates nothing."""
    from rmeeto.train.rundir import describe_os_error

    out = Path(path)
    if out.is_dir():
        raise CLIError(f"{flag} {out} is a folder; give a file path")
    existing = out.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise CLIError(f"{flag} {out} is below the file {existing}; choose another path")
    try:  # a real probe: permission bits say nothing for root, and a full disk only shows on writing
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise CLIError(f"{flag} {describe_os_error(exc, existing)}") from None
    return out


def check_not_an_input(out, inputs, flag: str) -> None:
    """CLIError when writing ``out`` would replace one of ``inputs`` (paths, None skipped): the same path, a link
    to it, or a hard link. Run before anything is written; a user's checkpoint or image is never an output."""
    out = Path(out)
    for given in inputs:
        if given is None or not out.exists():
            continue
        try:
            same = os.path.samefile(out, given)
        except OSError:  # the input is gone or unreadable: nothing of it to lose
            continue
        if same:
            raise CLIError(f"{flag} {out} is the input {given}; writing it would replace it: choose another path")


def write_file_atomic(out: Path, text: str, flag: str) -> None:
    """Write ``text`` to ``out`` whole or not at all (:func:`rmeeto._files.write_atomic`): a failure (disk full,
    read-only) leaves an existing file untouched and no partial or 0-byte file behind; CLIError in one line."""
    from rmeeto.train.rundir import describe_os_error

    try:
        write_atomic(out, text)
    except OSError as exc:
        kept = "; the existing file is unchanged" if Path(out).exists() else ""
        raise CLIError(f"{flag} {describe_os_error(exc, out)}{kept}") from None


def check_model(name: str):
    """The registered :class:`~rmeeto.models.ModelConfig` of ``name``, or CLIError."""
    from rmeeto.models import get_config

    with user_errors():
        return get_config(name)


def check_paths(checkpoint: Optional[str], data: Optional[str] = None) -> None:
    """Fail early (before anything slow) on a missing checkpoint file or data folder."""
    if checkpoint is not None:
        p = _local_checkpoint(checkpoint)
        if not p.exists():
            raise CLIError(f"checkpoint {checkpoint} does not exist")
        if not p.is_file():
            raise CLIError(f"checkpoint {checkpoint} is not a file")
    if data is not None and data != "digits" and not Path(data).exists():
        raise CLIError(f"data {data!r} not found: give 'digits', an existing image folder or a clip folder")


def _local_checkpoint(checkpoint: str) -> Path:
    """The local file of a checkpoint path; ``hf-hub:`` paths are fetched (see :func:`rmeeto.hub.resolve`)."""
    from rmeeto.hub import HubError, resolve

    try:
        return resolve(checkpoint)
    except HubError as exc:
        raise CLIError(str(exc)) from None


def merge_config_for(args: argparse.Namespace, model_name: str):
    """(config, where it came from): the merge flags if any were given, else the config stored in a
    re-trained checkpoint (so a merged re-training is evaluated as it was trained), else None (unmerged)."""
    from rmeeto.evaluate import stored_merge_config

    config = merge_config_from_args(args, model_name)
    if config is not None:
        return config, "flags"
    with user_errors():
        stored = stored_merge_config(getattr(args, "checkpoint", None))
    if stored is not None:
        return stored, "checkpoint"
    return None, "none"


def resolve_device(text: str):
    from rmeeto.runtime import resolve_device as _resolve

    with user_errors(f"--device {text}: "):
        return _resolve(text)


def resolve_amp(text: str, device):
    from rmeeto.runtime import resolve_dtype

    if text == "none":
        return None
    try:
        return resolve_dtype(text, device)
    except ValueError:
        raise CLIError(f"--amp {text} needs a CUDA device; use --amp bf16 or none on CPU") from None


def build_eval_dataset(data: str, model_name: str, limit: Optional[int] = None, test_views: bool = False,
                       checkpoint: Optional[str] = None):
    """:func:`rmeeto.evaluate.build_eval_dataset` -> (dataset, class names), errors as CLIError. With the
    ``checkpoint`` of a run trained on an image folder, labels are numbered by that run's class list."""
    from rmeeto.evaluate import build_eval_dataset as _build
    from rmeeto.evaluate import stored_classes

    if limit is not None and limit < 1:
        raise CLIError(f"--limit must be >= 1, got {limit}")
    with user_errors():
        classes = stored_classes(checkpoint) if checkpoint and data not in ("digits", "synthetic") else None
        return _build(data, model_name, limit, test_views=test_views, classes=classes)


def is_video_model(model_cfg) -> bool:
    return getattr(model_cfg.arch, "num_frames", None) is not None


def data_classes_for(model_cfg, classes) -> Optional[int]:
    """The class count the data dictates: an image set's; None for clips, whose list only shows the labels
    used (the head comes from the checkpoint or the registry; :func:`check_clip_labels` checks it fits)."""
    return None if is_video_model(model_cfg) else len(classes)


def check_clip_labels(model_cfg, classes, num_classes: int, data: str) -> None:
    if is_video_model(model_cfg) and len(classes) > num_classes:
        raise CLIError(f"clip list of {data} has label {len(classes) - 1}, but the model has {num_classes} classes")


def build_loader(dataset, batch_size: int, workers: int, device):
    from torch.utils.data import DataLoader

    from rmeeto.data import collate_skip_none
    from rmeeto.video import VideoClipDataset, collate_clips

    inner = getattr(dataset, "dataset", dataset)  # through a --limit Subset
    collate = collate_clips if isinstance(inner, VideoClipDataset) else collate_skip_none

    if batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {batch_size}")
    if workers < 0:
        raise CLIError(f"--workers must be >= 0, got {workers}")
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=collate, pin_memory=device.type == "cuda",
                      persistent_workers=False)


def num_classes_for(model_name: str, model_cfg, checkpoint: Optional[str], data_classes: Optional[int],
                    data_name: str = "", use_ema: bool = False) -> int:
    """Head size to build: the checkpoint's (which must match the data's class count), else the data's, else
    the registry's."""
    from rmeeto.evaluate import check_structure, checkpoint_num_classes

    if checkpoint is not None:
        with user_errors():
            check_structure(checkpoint, model_name)
            n = checkpoint_num_classes(checkpoint, use_ema)
        if data_classes is not None and n != data_classes:
            raise CLIError(
                f"checkpoint {checkpoint} has a {n}-class classifier but data {data_name!r} has {data_classes} "
                f"classes; evaluate it on the data it was trained for"
            )
        return n
    if data_classes is not None:
        return data_classes
    return model_cfg.arch.num_classes


def load_model(model_name: str, checkpoint: Optional[str], merge_config, num_classes: int, device,
               use_ema: bool = False):
    """:func:`rmeeto.evaluate.load_model_for_eval` with ``merge_config`` as resolved by the caller (None =
    unmerged), errors as CLIError."""
    from rmeeto.evaluate import load_model_for_eval

    with user_errors(), warnings.catch_warnings():
        # apply_merge warns when a count is clamped; the printed token counts show it
        warnings.filterwarnings("ignore", message="merging .* is more than", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*merges at no layer", category=UserWarning)  # flags warned
        return load_model_for_eval(model_name, checkpoint, merge_config, num_classes=num_classes,
                                   device=device, use_ema=use_ema)


def first_image(dataset, input_dims: int = 3):
    """[1, C, H, W] of the first readable item, for tracing token counts (``input_dims`` 4: a clip
    [1, C, T, H, W]; of a multi-view item the first view)."""
    for i in range(min(len(dataset), 64)):
        item = dataset[i]
        if isinstance(item, tuple) and len(item) == 2 and hasattr(item[0], "unsqueeze"):
            x = item[0]
            while x.dim() > input_dims:
                x = x[0]
            return x.unsqueeze(0)
    raise CLIError("no readable image among the first 64 of the dataset")


def tokens_per_layer(model, image) -> list[int]:
    """Tokens each layer's mixer processes (after that layer's merge), measured with trace_tokens.
    trace_tokens records the count *entering* every layer and the count the head reads, so layer i's mixer
    sees the count entering layer i + 1."""
    from rmeeto.merge import trace_tokens

    records = trace_tokens(model, image)
    return [rec["tokens"] for rec in records[1:]]


def check_finite(stats: dict, checkpoint: Optional[str], data: Optional[str] = None) -> None:
    """CLIError when nothing was scored (every file unreadable) or some logits were NaN/inf: an accuracy computed
    from them would be a meaningless number."""
    if stats["n"] == 0:
        raise CLIError(f"no image or clip of {data or 'the data'} could be read; no accuracy reported")
    if stats.get("nonfinite"):
        from rmeeto.evaluate import nonfinite_outputs

        raise CLIError(f"{nonfinite_outputs(checkpoint, stats['nonfinite'], stats['n'])}; no accuracy reported")


def describe_merge(config) -> str:
    if config is None:
        return "none (unmerged)"
    return " ".join(f"{k}={v}" for k, v in config.to_dict().items())


# ============================================================================================ command
def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_data_arguments(parser)
    add_merge_arguments(parser)
    g = parser.add_argument_group("output")
    g.add_argument("--test-views", action="store_true",
                   help="video models: the official 12-view test (4 clips x 3 crops per video, softmax "
                        "averaged; default one centre clip)")
    g.add_argument("--json", metavar="OUT.json", help="also write the results as JSON")
    g.add_argument("--throughput", action="store_true",
                   help="also measure images/s by the official protocol (random input of --batch-size, "
                        "timed forwards only; 100 warm-up + 30 timed on CUDA, 1 + 3 on CPU)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import torch

    from rmeeto.evaluate import evaluate, measure_throughput
    from rmeeto.flops import paper_flops, true_flops
    from rmeeto.runtime import dtype_name
    from rmeeto.video import evaluate_views

    model_cfg = check_model(args.model)
    video = is_video_model(model_cfg)
    if args.test_views and not video:
        raise CLIError(f"--test-views is the 12-view video test; {args.model} takes images")
    check_paths(args.checkpoint, args.data)
    json_out = check_output_file(args.json, "--json") if args.json else None
    if json_out is not None and args.checkpoint is not None:
        check_not_an_input(json_out, [_local_checkpoint(args.checkpoint)], "--json")
    merge_config, merge_source = merge_config_for(args, args.model)
    device = resolve_device(args.device)
    amp = resolve_amp(args.amp, device)
    dataset, classes = build_eval_dataset(args.data, args.model, args.limit, args.test_views, args.checkpoint)
    num_classes = num_classes_for(args.model, model_cfg, args.checkpoint, data_classes_for(model_cfg, classes),
                                  args.data, args.ema)
    check_clip_labels(model_cfg, classes, num_classes, args.data)
    loader = build_loader(dataset, args.batch_size, args.workers, device)
    model = load_model(args.model, args.checkpoint, merge_config, num_classes, device, args.ema)
    unit = "videos" if video else "images"

    with torch.no_grad():
        tokens = tokens_per_layer(model, first_image(dataset, len(model_cfg.input_size)).to(device))
    gflops_paper = paper_flops(model, merge_config, clamp=True)
    gflops_true = true_flops(model, merge_config)["total"]

    print(f"model       {args.model}" + (f"  ({args.checkpoint})" if args.checkpoint else "  (random weights)"))
    views = " x 12 views" if args.test_views else ""
    print(f"data        {args.data}: {len(dataset)} {unit}{views}, {len(classes)} classes")
    stored = "  (stored in the checkpoint)" if merge_source == "checkpoint" else ""
    print(f"merge       {describe_merge(merge_config)}{stored}")
    print(f"tokens      {' '.join(map(str, tokens))}  (per layer, after its merge; {num_tokens_of(model)} at input)")
    print(f"GFLOPs      paper {gflops_paper:.4g}   true {gflops_true:.4g}", flush=True)

    if args.test_views:
        start = time.perf_counter()
        stats = evaluate_views(model, loader, device=device, amp_dtype=amp)
        seconds = time.perf_counter() - start
        stats = {"top1": stats["top1"], "top5": stats["top5"], "loss": None, "n": stats["n"],
                 "images_per_s": stats["n"] / seconds if seconds > 0 else float("nan"), "seconds": seconds}
    else:
        stats = evaluate(model, loader, device=device, amp_dtype=amp, progress=not args.no_progress,
                         desc=f"eval {args.model}")
    if stats["n"] == 0:
        raise CLIError(f"no readable {unit[:-1]} in {args.data}")
    check_finite(stats, args.checkpoint)
    skipped = len(dataset) - stats["n"]
    loss = "" if stats["loss"] is None else f"   loss {stats['loss']:.4f}"
    print(f"top-1       {stats['top1']:.2f} %   top-5 {stats['top5']:.2f} %{loss}"
          f"   ({stats['n']} {unit}" + (f", {skipped} unreadable skipped)" if skipped else ")"))
    print(f"speed       {stats['images_per_s']:.1f} {unit}/s (evaluation loop, data loading included)")

    speed = None
    if args.throughput:
        dtype = amp if amp is not None else torch.float32
        speed = measure_throughput(model, batch_size=args.batch_size, input_size=model_cfg.input_size,
                                   device=device, dtype=dtype)
        mem = f", peak {speed['peak_mem_mb']:.0f} MB" if speed["peak_mem_mb"] is not None else ""
        print(f"throughput  {speed['images_per_s']:.1f} {unit}/s, {speed['ms_per_image']:.3f} ms/{unit[:-1]} "
              f"(random batch of {args.batch_size}, {dtype_name(dtype)}{mem})")

    if args.json:
        result = {
            "model": args.model,
            "checkpoint": args.checkpoint,
            "data": args.data,
            "merge": merge_config.to_dict() if merge_config is not None else None,
            **stats,
            "skipped": skipped,
            "num_classes": num_classes,
            "test_views": bool(args.test_views),
            "tokens_per_layer": tokens,
            "gflops_paper": gflops_paper,
            "gflops_true": gflops_true,
            "throughput": speed,
            "device": str(device),
            "amp": args.amp,
        }
        write_file_atomic(json_out, json.dumps(result, indent=2) + "\n", "--json")
        print(f"wrote {json_out}")
    return 0

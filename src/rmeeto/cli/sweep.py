"""``rmeeto sweep``: training-free accuracy, GFLOPs and speed over a range of merged-token counts."""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
import warnings
from dataclasses import replace
from pathlib import Path

from rmeeto.backbones import default_interval, num_tokens_of, schedule_for
from rmeeto.argtypes import comma_choices, comma_nonneg_ints, positive_int
from rmeeto.cli.eval import (
    add_model_data_arguments,
    build_eval_dataset,
    build_loader,
    check_clip_labels,
    check_finite,
    check_model,
    check_paths,
    data_classes_for,
    is_video_model,
    load_model,
    num_classes_for,
    resolve_amp,
    resolve_device,
    user_errors,
    write_file_atomic,
)
from rmeeto.merge import METRICS

HELP = "accuracy vs GFLOPs and images/s over merged-token counts (merge vs prune, ordered vs unordered)"
DESCRIPTION = """\
Evaluate MODEL without training for every tokens-per-merge count in --num-merged, for each --modes (merge:
average matched tokens into their partners; prune: drop them) and --layouts (ordered: keep the spatial token
order; unordered: the official kept/cls/destination layout). For each setting it records top-1/top-5, GFLOPs
(paper formula and true count), the tokens the head reads, and images/s by the official protocol (random
input, timed forwards). Writes DIR/sweep.csv and DIR/sweep.png (top-1 vs true GFLOPs and vs images/s, one
line per mode and layout) and prints a table. The model is loaded once; counts larger than a layer allows
are clamped to (tokens - 1) // 2 (see the 'tokens' column).

Video models (videomamba_*_f8) read a clip folder, --data DIR with DIR/val.csv ('path label' lines, paths
relative to DIR; see 'rmeeto eval --help'), one centre clip per video; speeds are then clips/s.

examples:
  rmeeto sweep vim_digits_patch4_32 --checkpoint out/demo/teacher/best.pth --num-merged 0,1,2,4,6,8
  rmeeto sweep vim_small_patch16_224 --checkpoint vim_s_midclstok_80p5acc.pth --data /data/imagenet \\
      --num-merged 0,3,5,7,9,11 --modes merge --limit 10000 --amp bf16 --out out/sweep_s
  rmeeto sweep videomamba_tiny_patch16_224_f8 --checkpoint videomamba_t16_k400_f8_res224.pth --data /data/k400 \\
      --num-merged 0,40,88 --modes merge --layouts ordered --batch-size 8 --amp bf16
"""

FIELDS = ("mode", "layout", "num_merged", "tokens", "top1", "top5", "loss", "n", "paper_gflops", "true_gflops",
          "images_per_s", "ms_per_image", "peak_mem_mb")
MODES = ("merge", "prune")
LAYOUTS = ("ordered", "unordered")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_data_arguments(parser)
    g = parser.add_argument_group("sweep")
    g.add_argument("-r", "--num-merged", dest="num_merged", type=comma_nonneg_ints, required=True, metavar="N,N,...",
                   help="tokens merged at each merging layer, one run per value (e.g. 0,1,2,4,8)")
    g.add_argument("--modes", type=comma_choices(MODES), default=list(MODES), metavar="merge,prune",
                   help="merge, prune or both (default both)")
    g.add_argument("--layouts", type=comma_choices(LAYOUTS), default=list(LAYOUTS), metavar="ordered,unordered",
                   help="token layouts after a merge (default both)")
    g.add_argument("--interval", type=positive_int, default=None, metavar="K",
                   help="merge every K-th layer (default 2 for a Vim, 1 for a ViT/DeiT: every block, as ToMe)")
    g.add_argument("--odd", action="store_true", help="merge at layers i with (i + 1) %% K == 0")
    g.add_argument("--metric", choices=METRICS, default="x", help="similarity source (default x)")
    g.add_argument("--throughput-batch", type=positive_int, default=None, metavar="N",
                   help="batch size of the speed measurement (default: --batch-size)")
    g.add_argument("--no-throughput", action="store_true", help="skip the speed measurement")
    g.add_argument("--out", default="out/sweep", metavar="DIR", help="output folder (default out/sweep)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


HEADER = (f"{'mode':<6} {'layout':<10} {'r':>3} {'tokens':>6} {'top-1':>7} {'top-5':>7} {'paper GF':>9} "
          f"{'true GF':>9} {'images/s':>9}")


def _format_row(row: dict) -> str:
    return (f"{row['mode']:<6} {row['layout']:<10} {row['num_merged']:>3} {row['tokens']:>6} {row['top1']:>7.2f} "
            f"{row['top5']:>7.2f} {row['paper_gflops']:>9.4g} {row['true_gflops']:>9.4g} {row['images_per_s']:>9.1f}")


def sweep_configs(num_merged, modes, layouts, interval=2, odd=False, metric="x"):
    """(mode, layout, r, MergeConfig) for every combination, in table order."""
    from rmeeto.merge import MergeConfig

    base = MergeConfig(interval=interval, odd=odd, metric=metric)
    return [
        (mode, layout, r, replace(base, num_merged=r, mode=mode, ordered=layout == "ordered"))
        for mode in modes for layout in layouts for r in num_merged
    ]


def plot_sweep(rows: list[dict], path: Path, title: str, speed_label: str = "images / s") -> None:
    """Two panels, top-1 vs true GFLOPs and top-1 vs images/s (only if measured); one line per (mode, layout),
    points labelled with their merged-token count."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    styles = {
        ("merge", "ordered"): ("tab:blue", "-", "o"),
        ("merge", "unordered"): ("tab:cyan", "--", "s"),
        ("prune", "ordered"): ("tab:red", "-", "^"),
        ("prune", "unordered"): ("tab:orange", "--", "v"),
    }
    with_speed = any(not math.isnan(r["images_per_s"]) for r in rows)
    panels = [("true_gflops", "GFLOPs (true count)")] + ([("images_per_s", speed_label)] if with_speed else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.6), dpi=110, squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        values = [r[key] for r in rows if not math.isnan(r[key])]
        cell = (max(values) - min(values)) / 50 or 1.0  # points closer than this share one label
        labelled = set()
        for (mode, layout), (color, ls, marker) in styles.items():
            # connect points in order of r (not of x): speed measurements are noisy
            line = [r for r in rows if r["mode"] == mode and r["layout"] == layout]
            pts = sorted((r["num_merged"], r[key], r["top1"]) for r in line)
            pts = [p for p in pts if not math.isnan(p[1])]
            if not pts:
                continue
            rs, xs, ys = zip(*pts)
            ax.plot(xs, ys, ls, color=color, marker=marker, label=f"{mode}, {layout}", lw=1.8, ms=6, alpha=0.9)
            for r, x, y in pts:
                spot = (r, round(x / cell), round(y, 1))
                if spot in labelled:  # (nearly) the same point on several lines, e.g. r=0: label it once
                    continue
                labelled.add(spot)
                ax.annotate(f"r={r}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
        ax.set_xlabel(label)
        ax.set_ylabel("top-1 (%)")
        ax.grid(alpha=0.3)
        ax.set_title(f"top-1 vs {label.split(' (')[0]}", fontsize=11)
    axes[0][0].legend(fontsize=9, loc="best")
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from rmeeto.evaluate import evaluate, measure_throughput
    from rmeeto.flops import paper_flops, true_flops
    from rmeeto.merge import apply_merge
    from rmeeto.runtime import dtype_name

    model_cfg = check_model(args.model)
    check_paths(args.checkpoint, args.data)
    device = resolve_device(args.device)
    amp = resolve_amp(args.amp, device)
    interval = args.interval if args.interval is not None else default_interval(args.model)
    configs = sweep_configs(args.num_merged, args.modes, args.layouts, interval, args.odd, args.metric)
    with user_errors(), warnings.catch_warnings():  # settings the model cannot take, before loading anything
        warnings.simplefilter("ignore")  # the clamping of large counts is reported per row
        for *_, config in configs:
            schedule_for(args.model, config)
    dataset, classes = build_eval_dataset(args.data, args.model, args.limit, checkpoint=args.checkpoint)
    num_classes = num_classes_for(args.model, model_cfg, args.checkpoint, data_classes_for(model_cfg, classes),
                                  args.data, args.ema)
    check_clip_labels(model_cfg, classes, num_classes, args.data)
    loader = build_loader(dataset, args.batch_size, args.workers, device)
    model = load_model(args.model, args.checkpoint, None, num_classes, device, args.ema)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tp_batch = args.throughput_batch or args.batch_size

    unit = "videos" if is_video_model(model_cfg) else "images"
    print(f"sweep {args.model} on {args.data} ({len(dataset)} {unit}): {len(configs)} settings", flush=True)
    print(HEADER, flush=True)
    rows, cache = [], {}
    show = not args.no_progress
    # disable=None: tqdm hides the bar when stderr is not a terminal
    for mode, layout, r, config in tqdm(configs, desc="sweep", unit="setting", disable=None if show else True):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="merging .* is more than", category=UserWarning)
            apply_merge(model, config)
        schedule = schedule_for(model, config)
        # every r = 0 setting (and any that clamps to nothing) is the same model: evaluate it once
        key = ("noop",) if not any(s.num_merged for s in schedule) else (mode, layout, r)
        if key not in cache:
            stats = evaluate(model, loader, device=device, amp_dtype=amp, progress=show, desc=f"{mode} {layout} r={r}")
            check_finite(stats, args.checkpoint, args.data)
            speed = {"images_per_s": math.nan, "ms_per_image": math.nan, "peak_mem_mb": None}
            if not args.no_throughput:
                speed = measure_throughput(model, batch_size=tp_batch, input_size=model_cfg.input_size, device=device,
                                           dtype=amp or torch.float32)
            cache[key] = (stats, speed)
        stats, speed = cache[key]
        rows.append({
            "mode": mode, "layout": layout, "num_merged": r,
            "tokens": schedule[-1].tokens_out if schedule else num_tokens_of(model),
            "top1": stats["top1"], "top5": stats["top5"], "loss": stats["loss"], "n": stats["n"],
            # a setting that merges nothing runs the unmerged model: no matching cost, whatever the formula adds
            "paper_gflops": paper_flops(model, None if key == ("noop",) else config, clamp=True),
            "true_gflops": true_flops(model, config)["total"],
            "images_per_s": speed["images_per_s"], "ms_per_image": speed["ms_per_image"],
            "peak_mem_mb": speed["peak_mem_mb"],
        })
        tqdm.write(_format_row(rows[-1]))  # each row as soon as it is done, above the progress bar
        sys.stdout.flush()

    csv_path, png_path = out / "sweep.csv", out / "sweep.png"
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    # through a temporary file and a rename: a full disk or a kill mid-write leaves any previous sweep.csv intact
    write_file_atomic(csv_path, table.getvalue(), "--out")
    dtype = dtype_name(amp)
    plot_sweep(rows, png_path, f"{args.model} on {args.data} ({rows[0]['n']} {unit}), training-free",
               speed_label=f"{unit} / s ({device.type}, random batch of {tp_batch}, {dtype})")

    print("(paper GF: official formula, requested counts, no clamping; true GF: actual counts)")
    print(f"wrote {csv_path}")
    print(f"wrote {png_path}")
    return 0

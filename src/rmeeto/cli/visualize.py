"""``rmeeto visualize``: draw which image patches share a token after merging, one PNG per image."""

from __future__ import annotations

import argparse
import os
from collections import Counter
from pathlib import Path

from rmeeto.backbones import depth_of
from rmeeto.cli import CLIError
from rmeeto.cli._merge_args import add_merge_arguments
from rmeeto.cli.eval import (check_model, check_not_an_input, check_paths, load_model, merge_config_for,
                             num_classes_for, resolve_device)

HELP = "show which patches end up in the same token at a layer (one PNG per image or video clip)"
DESCRIPTION = """\
Run MODEL with token merging on some images and draw, for each, which original patches have been merged
into the same token at --layer K: each multi-patch token gets a colour and an outline over the image; single
patches stay clear; pruned patches (with --prune) are hatched dark. The title gives the prediction (and the
true label for digits). Layer K means the tokens layer K processes, after the merge at its start; the default
is the last layer, i.e. what the head reads. The class token is never merged and is not part of the picture
(the official visualizer mistook the top-left patch for it; rmeeto does not).

Without merge flags the merge config stored in a 'rmeeto retrain' checkpoint is used, else the paper preset
of the model (e.g. r=4 for vim_digits_patch4_32).

Video models (videomamba_*_f8) take --clips N --data DIR: the first N videos of the clip folder's val list
(DIR/val.csv, 'path label' lines, paths relative to DIR; see 'rmeeto eval --help'), one centre clip each, drawn
as a grid with one column per frame (the frames on top, their token groups below; a token merged across frames
has the same colour in each).

examples:
  rmeeto visualize vim_digits_patch4_32 --checkpoint out/demo/retrain/best.pth --digits 8
  rmeeto visualize vim_digits_patch4_32 --digits 4 -r 6 --layer 6 --out out/vis_r6
  rmeeto visualize vim_small_patch16_224 --checkpoint vim_s_midclstok_80p5acc.pth --preset paper \\
      --images cat.jpg dog.jpg --out out/vis
  rmeeto visualize videomamba_tiny_patch16_224_f8 --checkpoint videomamba_t16_k400_f8_res224.pth \\
      --preset paper --clips 2 --data /data/k400 --out out/vis_video
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="registered model name (see 'rmeeto models')")
    parser.add_argument("--checkpoint", metavar="PATH", help="weights (.pth or .safetensors); default: random init")
    parser.add_argument("--ema", action="store_true", help="use the checkpoint's 'model_ema' weights")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", nargs="+", metavar="FILE", help="image files (resized and center-cropped)")
    src.add_argument("--digits", type=int, metavar="N", help="the first N images of the embedded digits val split")
    src.add_argument("--clips", type=int, metavar="N",
                     help="video models: the first N videos of --data's val list (one centre clip each)")
    parser.add_argument("--data", metavar="DIR", help="with --clips: a clip folder with val.csv ('path label' lines)")
    parser.add_argument("--layer", type=int, default=None, metavar="K",
                        help="show the tokens layer K processes (default: the last layer; negative K counts "
                             "from the end)")
    add_merge_arguments(parser)
    parser.add_argument("--out", default="out/visualize", metavar="DIR", help="output folder (default out/visualize)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")


def _load_clips(args, model_cfg):
    """[(name, normalised clip [C, T, H, W], true label)] of the first --clips videos of --data's val list
    that can be read, plus None for the class names (a clip list has label numbers only)."""
    from rmeeto.cli.eval import build_eval_dataset
    from rmeeto.data import SkippedSample

    if args.clips < 1:
        raise CLIError(f"--clips must be >= 1, got {args.clips}")
    if not args.data:
        raise CLIError("--clips needs --data DIR (a clip folder with val.csv)")
    dataset, _ = build_eval_dataset(args.data, args.model)
    items = []
    for i in range(len(dataset)):
        item = dataset[i]
        if isinstance(item, SkippedSample):
            continue
        items.append((Path(dataset.samples[i][0]).stem, *item))
        if len(items) == args.clips:
            break
    if not items:
        raise CLIError(f"no readable video in {args.data}")
    return items, None


def _load_images(args, model_cfg):
    """[(name, normalised tensor [C, H, W], true label or None)] plus the class names (or None)."""
    from rmeeto.data import build_dataset, eval_transform

    video = getattr(model_cfg.arch, "num_frames", None) is not None
    if video != (args.clips is not None):
        raise CLIError(f"{args.model} is a video model: give --clips N --data DIR" if video
                       else f"--clips is for video models; {args.model} takes images (--images or --digits)")
    if video:
        return _load_clips(args, model_cfg)
    size = model_cfg.input_size[-1]
    if args.digits is not None:
        if args.digits < 1:
            raise CLIError(f"--digits must be >= 1, got {args.digits}")
        ds = build_dataset("digits", "val", img_size=size, mean=model_cfg.mean, std=model_cfg.std)
        n = min(args.digits, len(ds))
        return [(f"digits_{i:03d}", *ds[i]) for i in range(n)], list(ds.classes)

    from PIL import Image, UnidentifiedImageError

    transform = eval_transform(size, model_cfg.mean, model_cfg.std, model_cfg.crop_pct)
    items = []
    for path, stem in zip(args.images, output_stems(args.images)):
        p = Path(path)
        if not p.is_file():
            raise CLIError(f"image {path} does not exist")
        try:
            with Image.open(p) as img:
                items.append((stem, transform(img.convert("RGB")), None))
        except (OSError, UnidentifiedImageError) as exc:
            raise CLIError(f"cannot read image {path}: {exc}") from None
    return items, None


def output_stems(paths) -> list[str]:
    """One distinct file-name stem per input path: the file's stem, with as many of its folders as tell it from
    other inputs of the same stem (a/0.jpg, b/0.jpg -> a_0, b_0), and a counter for the same file given twice,
    so that no picture overwrites another."""
    full = [Path(os.path.abspath(p)).with_suffix("").parts for p in paths]
    stems = []
    for i, parts in enumerate(full):
        rivals = [o for j, o in enumerate(full) if j != i and o[-1] == parts[-1] and o != parts]
        depth = 1
        while any(o[-depth:] == parts[-depth:] for o in rivals):
            depth += 1
        stems.append("_".join(parts[-depth:]).replace(os.sep, ""))
    counts, seen = Counter(stems), Counter()
    for i, stem in enumerate(stems):
        if counts[stem] > 1:
            seen[stem] += 1
            stems[i] = f"{stem}_{seen[stem]}"
    return stems


def run(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from rmeeto.merge import MergeConfig
    from rmeeto.visualize import draw_clip_token_groups, draw_token_groups, token_groups

    model_cfg = check_model(args.model)
    check_paths(args.checkpoint)
    merge_config, _ = merge_config_for(args, args.model)
    if merge_config is None:
        merge_config = MergeConfig.paper(args.model)
        print(f"no merge flags: using --preset paper (r={merge_config.num_merged})")
    device = resolve_device(args.device)
    items, classes = _load_images(args, model_cfg)
    num_classes = num_classes_for(args.model, model_cfg, args.checkpoint, len(classes) if classes else None,
                                  "digits", args.ema)
    if args.clips is not None and max(label for _, _, label in items) >= num_classes:
        raise CLIError(f"clip list of {args.data} has labels beyond the model's {num_classes} classes")
    model = load_model(args.model, args.checkpoint, merge_config, num_classes, device, args.ema)
    depth = depth_of(model)
    if args.layer is not None and not -depth <= args.layer < depth:
        raise CLIError(
            f"--layer must be in [{-depth}, {depth - 1}] for {args.model} ({depth} layers), got {args.layer}"
        )

    images = torch.stack([x for _, x, _ in items]).to(device)
    groups, info = token_groups(model, images, args.layer)
    if not torch.isfinite(info["logits"]).all():
        from rmeeto.evaluate import nonfinite_outputs

        raise CLIError(f"{nonfinite_outputs(args.checkpoint)}; nothing drawn")
    probs = info["logits"].float().softmax(-1)
    # [3, 1, 1] for images [C, H, W], [3, 1, 1, 1] for clips [C, T, H, W]
    mean = torch.tensor(model_cfg.mean).view(3, *[1] * (images.dim() - 2))
    std = torch.tensor(model_cfg.std).view(3, *[1] * (images.dim() - 2))
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file; give a folder for the pictures")
    out.mkdir(parents=True, exist_ok=True)
    name_of = (lambda i: classes[i]) if classes and len(classes) == num_classes else str

    weights = args.checkpoint if args.checkpoint else "random weights"
    paths = [out / f"{stem}_layer{info['layer']}.png" for stem, _, _ in items]
    for path in paths:  # before drawing anything: an input picture is never replaced by an output
        check_not_an_input(path, [*(args.images or ()), args.checkpoint], "--out: the picture")
    for b, ((stem, x, label), path) in enumerate(zip(items, paths)):
        pixels = (x.cpu() * std + mean).clamp(0, 1)
        pixels = pixels.permute(*range(1, pixels.dim()), 0).numpy()  # [H, W, 3] or [T, H, W, 3]
        p, pred = probs[b].max(-1)
        title = f"pred {name_of(int(pred))} ({p.item():.0%})"
        if label is not None:
            title += f", true {name_of(int(label))}"
        title += f"\n{args.model} ({Path(weights).name}), layer {info['layer']}: {info['tokens']} tokens"
        draw = draw_clip_token_groups if pixels.ndim == 4 else draw_token_groups
        fig = draw(pixels, groups[b].cpu().numpy(), title=title)
        fig.savefig(path)
        plt.close(fig)
        print(f"wrote {path}  ({title.splitlines()[0]})")
    return 0

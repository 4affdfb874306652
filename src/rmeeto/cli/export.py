"""``rmeeto export``: a merged or plain model as a self-contained ExportedProgram (.pt2) or ONNX file."""

from __future__ import annotations

import argparse
import sys

from rmeeto.cli import CLIError
from rmeeto.cli._merge_args import add_merge_arguments
from rmeeto.argtypes import positive_int

HELP = "export a merged or plain model for deployment (torch.export .pt2 or ONNX)"
DESCRIPTION = """\
Build MODEL, load --checkpoint (a file or hf-hub:OWNER/REPO/FILE[@REV]), apply the merge flags (or the merge
config a 'rmeeto retrain' checkpoint stores) and write it as one self-contained file, traced on the CPU in
float32 through the pure-PyTorch path (reference scan). The file maps images [batch, 3, H, W] to logits.

  exported-program  FILE.pt2: torch.export.load(FILE).module()(images), CPU or GPU, the writing PyTorch or newer
  onnx              FILE.onnx: onnxruntime (CPU or CUDA provider), TensorRT, ... (pip install 'rmeeto[export]')

After writing, the file is run on random inputs and compared with the eager model (skip with --no-verify).

examples:
  rmeeto export vim_small_patch16_224 --checkpoint vim_s_midclstok_80p5acc.pth --preset paper \\
      --format exported-program --out vim_s_r11.pt2 --dynamic-batch
  rmeeto export vim_small_patch16_224 --checkpoint runs/vim_s/best.pth --format onnx --out vim_s.onnx
  rmeeto export vim_tiny_patch16_224 --checkpoint hf-hub:hustvl/Vim-tiny-midclstok/vim_t_midclstok_76p1acc.pth \\
      --format onnx --out vim_t.onnx --batch-size 8
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="registered model name (see 'rmeeto models')")
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="weights (.pth / .safetensors or hf-hub:OWNER/REPO/FILE[@REV]; read weights-only)")
    parser.add_argument("--ema", action="store_true", help="export the checkpoint's model_ema weights")
    add_merge_arguments(parser)
    g = parser.add_argument_group("export")
    g.add_argument("--format", choices=("exported-program", "onnx"), default="exported-program",
                   help="exported-program (.pt2, default) or onnx (.onnx)")
    g.add_argument("--out", required=True, metavar="FILE", help="output file (.pt2 or .onnx)")
    g.add_argument("--batch-size", type=positive_int, default=1, metavar="N",
                   help="batch size traced (the only one accepted without --dynamic-batch; default 1)")
    g.add_argument("--dynamic-batch", action="store_true", help="accept any batch size >= 1")
    g.add_argument("--no-verify", dest="verify", action="store_false",
                   help="do not compare the exported file with the eager model afterwards")


def run(args: argparse.Namespace) -> int:
    from rmeeto.cli.eval import (_local_checkpoint, check_model, check_not_an_input, check_paths, load_model,
                                 merge_config_for, num_classes_for)
    from rmeeto.export import ExportError, export_model, verify_export

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    cfg = check_model(args.model)
    check_paths(args.checkpoint)
    check_not_an_input(args.out, [_local_checkpoint(args.checkpoint)], "--out")
    config, source = merge_config_for(args, args.model)
    num_classes = num_classes_for(args.model, cfg, args.checkpoint, None, use_ema=args.ema)
    model = load_model(args.model, args.checkpoint, config, num_classes, "cpu", use_ema=args.ema)
    log(f"{args.model}: " + ("unmerged" if config is None else f"merged ({source}: num_merged={config.num_merged})"))
    try:
        out = export_model(model, args.out, args.format, args.batch_size, args.dynamic_batch, log=log)
        if args.verify:
            sizes = (1, args.batch_size + 1) if args.dynamic_batch else (args.batch_size,)
            worst = verify_export(model, out, sizes)
            log(f"verified: max |exported - eager| = {worst:.2e} over batch sizes {', '.join(map(str, sizes))}")
    except ExportError as exc:
        raise CLIError(str(exc)) from None
    except ImportError as exc:  # onnxruntime missing at verification
        raise CLIError(f"cannot verify {args.out}: {exc} (pip install onnxruntime, or --no-verify)") from None
    print(out)
    return 0

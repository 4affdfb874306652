"""The patch embedding of a graphed forward, per call at batch 128 (224 px, fp16), by path: what a graph replay
does today (copy the image into the captured input, cut it into patch rows, cuBLAS GEMM, class-token insert + position
add), the same without the copy, and the fused kernel of ``rmeeto.ops.triton.embed.embed_tokens`` (the GEMM reading
its patches from the image, the insert in its epilogue; under a graph it reads the image where it lies), with a
sweep of its tiles. GPU time from CUDA events over graph replays of eight calls each, the calls reading four
images in turn (more than the L2 holds, as a forward finds its input).

    PYTHONPATH=src python3 benchmarks/bench_embed_gpu.py [--widths 192,384,768] [--sweep]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from bench_merge_gpu import _event_ms, _graphed
from rmeeto.ops import embed
from rmeeto.ops.triton import embed as te

SWEEP = [  # EMBED_BLOCK_M, EMBED_MAX_N, EMBED_BLOCK_K, EMBED_WARPS, EMBED_STAGES
    (128, 64, 64, 4, 4), (128, 128, 64, 4, 4), (128, 128, 64, 8, 4), (128, 256, 64, 8, 3), (64, 128, 64, 4, 4),
    (128, 64, 32, 4, 5), (128, 128, 32, 4, 5), (256, 128, 64, 8, 3), (64, 64, 64, 4, 4), (128, 64, 64, 4, 3),
]
NAMES = ("EMBED_BLOCK_M", "EMBED_MAX_N", "EMBED_BLOCK_K", "EMBED_WARPS", "EMBED_STAGES")


def per_call_us(fn, inner: int = 8) -> float:
    """GPU us per call of ``fn(i)`` for calls i = 0..inner-1 captured in one graph (replayed back to back)."""
    replay = _graphed(lambda: [fn(i) for i in range(inner)])
    return 1000 * _event_ms(replay, reps=15, inner=3) / inner


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", default="192,384,768")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--buffers", type=int, default=4, help="images read in turn (4 x 38.5 MB: more than the L2)")
    ap.add_argument("--sweep", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    dev = "cuda"
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, batch {args.batch}, fp16, us per call, "
          f"{args.buffers} images read in turn")
    xs = [torch.randn(args.batch, 3, 224, 224, device=dev).half() for _ in range(args.buffers)]
    static = torch.empty_like(xs[0])
    offsets = [torch.full((1,), (x.data_ptr() - static.data_ptr()) // 2, dtype=torch.int64, device=dev) for x in xs]
    default = tuple(getattr(te, n) for n in NAMES)
    nb = args.buffers
    for e in map(int, args.widths.split(",")):
        w = (torch.randn(e, 3, 16, 16, device=dev) / 768 ** 0.5).half()
        bias = torch.randn(e, device=dev).half()
        cls, pos = torch.randn(1, 1, e, device=dev).half(), torch.randn(1, 197, e, device=dev).half()
        w2, cls1, pos2 = w.reshape(e, -1), cls.reshape(e), pos.reshape(197, e)

        def unfused(src):
            t = F.linear(embed.patch_rows(src, 16), w2, bias)
            return embed.insert_cls_add_pos(t, cls, pos, 98)

        def copy_unfused(i):
            static.copy_(xs[i % nb])
            return unfused(static)

        fused = lambda i: embed.embed_tokens(xs[i % nb], w, bias, cls, pos, 98, 16)
        # as under a graph: the kernel given the captured input, reading the image at an offset held on the device
        through = lambda i: te.embed_tokens(static, w2, bias, cls1, pos2, 98, 16, torch.float16, offsets[i % nb])
        with torch.no_grad():
            diff = (fused(0).float() - unfused(xs[0]).float()).abs().max().item()
            same = torch.equal(through(0), fused(0))
            row = {"copy+cut+cublas+insert": per_call_us(copy_unfused),
                   "cut+cublas+insert": per_call_us(lambda i: unfused(xs[i % nb])),
                   "fused": per_call_us(fused), "fused at an offset": per_call_us(through)}
            print(f"E={e}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items())
                  + f"  (max |fused - cuBLAS path| {diff:.3g}; at an offset the same bits: {same})")
            if args.sweep:
                for cfg in SWEEP:
                    for n, v in zip(NAMES, cfg):
                        setattr(te, n, v)
                    try:
                        print(f"  E={e} tiles {cfg}: {per_call_us(fused):.1f}, at an offset {per_call_us(through):.1f}")
                    except Exception as err:  # e.g. out of shared memory
                        print(f"  E={e} tiles {cfg}: {type(err).__name__}: {str(err)[:80]}")
                for n, v in zip(NAMES, default):
                    setattr(te, n, v)


if __name__ == "__main__":
    main()

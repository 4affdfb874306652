"""The scan forward with B and C read from x_dbl rows as the projection kernel writes them: at column R (dt_rank)
of R + 2N (Vim-Ti's 12: rows 8-byte aligned, the scan's 32-bit pair reads without prefetch) against column R
rounded up to 8 of a padded row (16-byte aligned: one vector load per row, prefetch; rmeeto.ops.triton.proj.
xdbl_row); with ``--fp32`` also float32 rows of B / C alone (read mode 3: no 16-bit unpacking), with and without
the prefetch of u / delta / z that the launcher now takes only in mode 2.

    PYTHONPATH=src python3 benchmarks/scan_align_gpu.py [--dims 384] [--dt-rank 12] [--lengths 197,76] [--batch 128]
        [--fp32]

Times the two-direction forward launcher in a CUDA graph (triton.testing.do_bench_cudagraph, median) with the same
values in every layout, and checks that all give the same bits."""

import argparse

import torch
import triton.testing

from rmeeto.ops.triton import scan as ts
from tuned_bench import bidir_inputs


def with_bc_rows(args, R: int, bo: int, n: int = 16, dtype=None):
    """``args`` (tuned_bench's inputs) with B / C moved into [batch, L, bo + 2n] rows of ``dtype`` (default
    theirs) at column ``bo`` after R columns of dt (the same values)."""
    args = list(args)
    for i_b, i_c in ((6, 8), (7, 9)):
        B, C = args[i_b], args[i_c]  # [batch, n, L] views
        batch, _, L = B.shape
        rows = torch.zeros(batch, L, bo + 2 * n, device=B.device, dtype=dtype or B.dtype)
        rows[..., :R] = 0.5
        rows[..., bo:bo + n] = B.transpose(1, 2)
        rows[..., bo + n:] = C.transpose(1, 2)
        args[i_b], args[i_c] = rows[..., bo:bo + n].transpose(1, 2), rows[..., bo + n:].transpose(1, 2)
    return args


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", default="384")
    ap.add_argument("--dt-rank", type=int, default=12)
    ap.add_argument("--lengths", default="197,76")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--fp32", action="store_true")
    a = ap.parse_args()
    R = a.dt_rank
    layouts = {"at R": (R, None, False), "padded": (-(-R // 8) * 8, None, False)}
    if a.fp32:
        layouts.update({"fp32 rows": (0, torch.float32, False), "fp32 rows, prefetch": (0, torch.float32, True)})
    shipped_prefetches = ts._prefetches
    print(torch.cuda.get_device_name(), flush=True)
    for dim in map(int, a.dims.split(",")):
        for L in map(int, a.lengths.split(",")):
            torch.manual_seed(0)
            base = bidir_inputs(a.batch, dim, L)
            outs = {}
            for name, (bo, dtype, force) in layouts.items():
                args = with_bc_rows(base, R if dtype is None else 0, bo, dtype=dtype)
                mode = ts._bc_mode(args[6], args[8], args[7], args[9])
                ts._prefetches = (lambda cfg, pack: bool(cfg.get("prefetch"))) if force else shipped_prefetches
                outs[name] = ts._fwd_bidir(*args)
                t = triton.testing.do_bench_cudagraph(lambda: ts._fwd_bidir(*args), rep=200, return_mode="median")
                print(f"dim {dim} L {L} batch {a.batch}: B / C at column {bo:2d} of {bo + 32} ({name}, read mode "
                      f"{mode}, prefetch {ts._prefetches(ts.FWD_CONFIG, mode)}): {1e3 * t:7.1f} us", flush=True)
            first = next(iter(outs.values()))
            print(f"  same bits: {all(torch.equal(first, o) for o in outs.values())}", flush=True)


if __name__ == "__main__":
    main()

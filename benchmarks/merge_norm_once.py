"""Run the merge + add + RMSNorm kernel and the plain add + RMSNorm kernel a few times at one Vim merging-layer shape
(fp16 hidden, float32 residual, sizes, batch 128), for a profiler to compare warm launches of the two:

    ncu --kernel-name regex:"_add_norm_fwd|_merge_norm_kernel" --launch-skip 3 --launch-count 3 ... \\
        python3 benchmarks/merge_norm_once.py [--tokens 197] [--channels 192] [-r 5]

Each call launches, in this order: the plain kernel over all ``tokens`` rows, the plain kernel over ``tokens - r``
rows (the rows the merge writes), then the merge + norm kernel (``tokens`` rows in, ``tokens - r`` out; plan lists
from the matching of the same hidden states).
"""

from __future__ import annotations

import argparse

import torch

from rmeeto.merge import plan_cls_index
from rmeeto.ops.triton import merge as mt, norm as nt


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=197)
    ap.add_argument("--channels", type=int, default=192)
    ap.add_argument("-r", type=int, default=5)
    ap.add_argument("--calls", type=int, default=3)
    a = ap.parse_args()
    torch.manual_seed(0)
    batch, L, C, r = a.batch, a.tokens, a.channels, a.r
    cls = L // 2
    h = torch.randn(batch, L, C, device="cuda", dtype=torch.float16)
    res = torch.randn(batch, L, C, device="cuda", dtype=torch.float32)
    size = torch.randint(1, 4, (batch, L, 1), device="cuda").float()
    w = torch.rand(C, device="cuda").half() + 0.5
    ws = mt._workspace(batch, L, r, h.device)
    mt._match_lists(h, cls, r, plan_cls_index(cls, L, r, True), True, ws)
    h_out, r_out = h[:, : L - r].contiguous(), res[:, : L - r].contiguous()
    for _ in range(a.calls):
        nt._norm_fwd(h, res, w, None, 1e-5)
        nt._norm_fwd(h_out, r_out, w, None, 1e-5)
        ro, y, s = mt._merge_norm_fwd(h, res, size, ws[9], ws[8], L - r, w, 1e-5)
    torch.cuda.synchronize()
    print(f"norm at {L} and {L - r} rows, merge + norm {L} -> {L - r}, x{a.calls}: batch {batch}, {C} channels; "
          f"checksum {float(y.float().sum()):.3f}")


if __name__ == "__main__":
    main()

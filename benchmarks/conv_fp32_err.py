"""Why tests/ops/test_gpu_conv.py's float32 cases failed with an elementwise relative bound: for each of dx, dw,
db of the conv backward (this tree vs the session-5 kernels, benchmarks/conv_v5.py), the elementwise relative
error (floored at 1e-3, the old test's measure), the normwise error (max |diff| / max |value|) and the largest
|diff|, float32, lengths 197 and 37, one direction each way. Needs CUDA."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import conv_v5  # noqa: E402

from rmeeto.ops.triton import conv as tconv  # noqa: E402

for length in (197, 37):
    gen = torch.Generator(device="cuda").manual_seed(length)
    dim = 200
    x = torch.randn(3, length, 2 * dim, generator=gen, device="cuda")[..., :dim]
    w = torch.randn(dim, 1, 4, generator=gen, device="cuda") * 0.5
    b = torch.randn(dim, generator=gen, device="cuda")
    g = torch.randn(3, length, dim, generator=gen, device="cuda")
    for rev in (False, True):
        new = tconv._conv_silu_triton_bwd(x, w, b, g, rev)
        old = conv_v5._conv_silu_triton_bwd(x, w, b, g, rev)
        for name, a, c in zip(("dx", "dw", "db"), new, old):
            d = (a - c).abs()
            rel = (d / c.abs().clamp_min(1e-3)).max().item()
            print(f"L={length} reverse={rev} {name}: elementwise {rel:.3g}, normwise "
                  f"{(d.max() / c.abs().max()).item():.3g}, max |diff| {d.max().item():.3g}, "
                  f"bitwise equal {torch.equal(a, c)}")

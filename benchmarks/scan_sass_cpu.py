"""The two-direction scan forward kernel compiled for a GPU target on a machine without one (as
``match_sass_cpu.py`` does for the matching), and each loop's instruction census by opcode
(``match_sass_cpu.summarise``): where a token step's instructions go. Not a timing; the device's Triton may compile
otherwise than this machine's.

    PYTHONPATH=src python benchmarks/scan_sass_cpu.py [--channels 384] [--tokens 197] [--arch 90] [--sass out.sass]
        [--tile 64,2,2]
"""

from __future__ import annotations

import argparse

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from match_sass_cpu import summarise
from rmeeto.ops.triton import scan as ts
from tuned_bench import bidir_inputs


def compile_scan(batch: int, dim: int, L: int, arch: int):
    args = bidir_inputs(batch, dim, L, device="cpu")
    u_f, u_b, delta_f, delta_b, A_f, A_b, B_f, B_b, C_f, C_b, D_f, D_b, z, bias_f, bias_b, sp, scale, a_log = args
    out = ts._like_layout2(u_f, u_f.dtype)
    grid, tail, meta = ts.fwd_bidir_spec(u_f, delta_f, A_f, B_f, C_f, B_b, C_b, D_f, z, bias_f, out, sp, scale, a_log)
    meta = dict(meta)
    options = {"num_warps": meta.pop("num_warps"), "num_stages": meta.pop("num_stages")}
    meta.pop("launch_pdl", None)
    tensors = [u_f, u_b, delta_f, delta_b, A_f, A_b, B_f, B_b, C_f, C_b, D_f, D_b, z, bias_f, bias_b, out]
    fn = ts._scan_bidir_fwd_kernel
    elem = {torch.float16: "*fp16", torch.float32: "*fp32"}
    signature, constexprs, attrs = {}, {}, {}
    values = list(tail)
    for idx, param in enumerate(fn.params):
        name = param.name
        if param.is_constexpr:
            signature[name] = "constexpr"
            constexprs[name] = meta.get(name, param.default)
        elif idx < len(tensors):
            signature[name] = elem[tensors[idx].dtype]
            attrs[(idx,)] = [["tt.divisibility", 16]]
        else:
            v = values[idx - len(tensors)]
            if isinstance(v, float):
                signature[name] = "fp32"
            else:
                signature[name] = "i32"
                if v % 16 == 0:
                    attrs[(idx,)] = [["tt.divisibility", 16]]
                if v == 1:
                    constexprs[name] = 1  # Triton specialises ints equal to 1
                    signature[name] = "constexpr"
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options), constexprs


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--channels", type=int, default=384)
    ap.add_argument("--tokens", type=int, default=197)
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--tile", default=None, help="BLOCK_D,CHUNK,num_warps (prefetch on) instead of FWD_CONFIG")
    ap.add_argument("--sass", default=None)
    a = ap.parse_args()
    if a.tile:
        bd, ch, nw = map(int, a.tile.split(","))
        ts.FWD_CONFIG = dict(BLOCK_D=bd, CHUNK=ch, num_warps=nw, prefetch=True)
    kernel, constexprs = compile_scan(a.batch, a.channels, a.tokens, a.arch)
    text, sass = summarise(kernel.asm["cubin"], by_opcode=True)
    print(f"_scan_bidir_fwd_kernel, sm_{a.arch}, Triton {triton.__version__}, {ts.FWD_CONFIG}")
    print(text)
    if a.sass:
        with open(a.sass, "w") as f:
            f.write(sass)


if __name__ == "__main__":
    main()

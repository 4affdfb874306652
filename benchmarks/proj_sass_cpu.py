"""x_proj + dt_proj's kernel (``rmeeto.ops.triton.proj``) compiled for a GPU target on a machine without one, per
tiling: registers, local memory and the instruction census of ``match_sass_cpu.summarise``. Registers decide how many
programs an SM holds, and a change that costs them shows here before any device time is spent: session 34's runtime
ROWS took Vim-B-width 128 x 64 x 64 tiles in 4 warps from 168 to 220 registers under Triton 3.6 (3 programs per SM to
2) and those tiles a third more time, which this finds in seconds. Not a timing.

The device's Triton may compile differently from this machine's: install its version beside it and put it first,
e.g. ``pip install --no-deps --target /tmp/tr36 triton==3.6.0`` then ``PYTHONPATH=/tmp/tr36:src``.

    PYTHONPATH=src python benchmarks/proj_sass_cpu.py [--channels 1536] [--tokens 186] [--arch 90]
        [--configs "128,64,64,4,2;64,64,64,4,2"] [--rows 96]
"""

from __future__ import annotations

import argparse

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from match_sass_cpu import summarise
from rmeeto.ops.triton import proj as tp


def compile_proj(M: int, D: int, cfg: dict, arch: int):
    """The compiled kernel over M rows of D channels (Vim: dt_rank D / 32, d_state 16) in tiles ``cfg``, the
    integer arguments and pointers given the divisibility a launch at this shape gives them."""
    R, n2 = D // 32, 32
    grid, tail, meta = tp.spec(M, D, R, n2, D, R, cfg)
    meta = dict(meta)
    options = {k: meta.pop(k) for k in ("num_warps", "num_stages", "maxnreg") if k in meta}
    fn = tp._bidir_proj_kernel
    values = dict(zip(("M", "D", "s_wx", "s_wdt"), tail))
    signature, constexprs, attrs = {}, {}, {}
    for idx, param in enumerate(fn.params):
        if param.is_constexpr:
            signature[param.name] = "constexpr"
            constexprs[param.name] = meta.get(param.name, param.default)
        elif param.name in values:
            signature[param.name] = "i32"
            if values[param.name] % 16 == 0:
                attrs[(idx,)] = [["tt.divisibility", 16]]
        else:  # the tensors: 16-bit activations and weights, 16-byte aligned
            signature[param.name] = "*fp16"
            attrs[(idx,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--channels", type=int, default=1536, help="d_inner (Vim-Ti / S / B: 384 / 768 / 1536)")
    ap.add_argument("--tokens", type=int, default=186, help="tokens per image, batch 128")
    ap.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: Hopper)")
    ap.add_argument("--configs", default=None,
                    help="BLOCK_M,BLOCK_K,BLOCK_N,warps,stages[,maxnreg];... (default: the module's tilings)")
    ap.add_argument("--rows", type=int, default=None, help="rows per program (ROWS), where below BLOCK_M")
    a = ap.parse_args()
    if a.configs:
        keys = ("BLOCK_M", "BLOCK_K", "BLOCK_N", "num_warps", "num_stages", "maxnreg")
        configs = [dict(zip(keys, (int(v) for v in c.split(",")))) for c in a.configs.split(";")]
    else:
        configs = [tp.PROJ_CONFIG, tp.PROJ_CONFIG_LARGE, tp.PROJ_CONFIG_NARROW, tp.PROJ_CONFIG_WAVE]
    print(f"_bidir_proj_kernel, sm_{a.arch}, Triton {triton.__version__}: 128 x {a.tokens} rows, {a.channels} channels")
    for cfg in configs:
        if a.rows is not None and a.rows < cfg["BLOCK_M"]:
            cfg = dict(cfg, ROWS=a.rows)
        text, _ = summarise(compile_proj(128 * a.tokens, a.channels, cfg, a.arch).asm["cubin"])
        print(f"== {cfg}\n{text}", flush=True)


if __name__ == "__main__":
    main()

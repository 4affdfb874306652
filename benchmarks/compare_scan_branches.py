"""Check that the two-direction scan kernels compile like the single-direction kernels they stand for: compiles (for
sm_90, no GPU needed; see compile_scan.py) the single-direction forward / backward kernels with REVERSE=False and
True and the two-direction kernels, then prints registers and the PTX opcodes whose counts differ between each
two-direction kernel and what it stands for.

The two-direction forward branches on the direction and compiles the forward body once per branch, each with its
direction as a constant: it stands for the sum of the two single-direction kernels. Expected differences: the
scaling multiplies (mul.f32: CHUNK * channels per thread per branch), parameter loads and the program's base address
arithmetic (done once for both branches), and stores after the loops that LLVM sinks into one block after the
branches; no 64-bit selects (selp.b64: a pointer chosen at run time).

The two-direction backward (scan_bwd.py) compiles its body once, with REVERSE=False, and walks the backward
direction from token L-1 on negated token strides: it stands for the single-direction kernel with REVERSE=False.
Expected differences: the 64-bit selects of the direction's tensors and the base / stride arithmetic (done once
per program), and the multiplies of dout by ``scale`` (the single-direction kernel's scale is the constant 1).

    python benchmarks/compare_scan_branches.py [--dtype fp16] [--dump PREFIX]
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import compile_scan as cs  # noqa: E402

from rmeeto.ops.triton import scan as ts  # noqa: E402
from rmeeto.ops.triton import scan_bwd as sb  # noqa: E402


def opcode_counts(ptx: str) -> collections.Counter:
    counts = collections.Counter()
    for line in ptx.split("\n"):
        line = line.strip()
        if not line or line.startswith(("//", ".", "$", "{", "}", "(", ")")):
            continue
        if line.startswith("@"):  # predicated
            line = line.split(None, 1)[1]
        counts[line.split()[0].rstrip(";")] += 1
    return counts


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", default="fp16")
    p.add_argument("--no-pack", dest="pack", action="store_false")
    p.add_argument("--dump", default=None, help="write the PTX of every kernel compiled with this path prefix")
    a = p.parse_args()
    flags = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, PACK=a.pack, A_IS_LOG=False, NP=16)
    fcfg, bcfg = ts.FWD_CONFIG, sb.BWD_XLANE_CONFIG
    # (name, single-direction kernel, two-direction kernel, config, constexprs of both, whether the two-direction
    # kernel stands for both single-direction ones (else for REVERSE=False alone))
    kernels = (("fwd", ts._scan_fwd_kernel, ts._scan_bidir_fwd_kernel, fcfg,
                dict(PREFETCH=fcfg.get("prefetch", False)), True),
               ("bwd", sb._scan_bwd_xlane_kernel, sb._scan_bwd_bidir_xlane_kernel, bcfg,
                dict(XLANE=True, REUSE_BC=bcfg.get("reuse_bc", True), PREFETCH=bcfg.get("prefetch", False)), False))
    for which, single, bidir, cfg, extra, both in kernels:
        tiles = dict(extra, BLOCK_D=cfg["BLOCK_D"], CHUNK=cfg["CHUNK"])
        maxnreg = cfg.get("maxnreg")
        total = collections.Counter()
        for reverse in (False, True):
            ck = cs.compile_kernel(single, dict(flags, REVERSE=reverse, **tiles), a.dtype, 90, cfg["num_warps"],
                                   maxnreg)
            cs.report(f"{which} REVERSE={reverse}", ck)
            if both or not reverse:
                total += opcode_counts(ck.asm["ptx"])
            if a.dump:
                with open(f"{a.dump}.{which}.reverse{int(reverse)}.ptx", "w") as f:
                    f.write(ck.asm["ptx"])
        ck = cs.compile_kernel(bidir, dict(flags, **tiles), a.dtype, 90, cfg["num_warps"], maxnreg)
        cs.report(f"bidir {which}", ck)
        if a.dump:
            with open(f"{a.dump}.bidir_{which}.ptx", "w") as f:
                f.write(ck.asm["ptx"])
        counts = opcode_counts(ck.asm["ptx"])
        differ = {op: (counts[op], total[op]) for op in sorted(set(counts) | set(total)) if counts[op] != total[op]}
        against = "the two single-direction kernels summed" if both else "the single-direction kernel (REVERSE=False)"
        print(f"  PTX instructions: bidir {sum(counts.values())}, {against} {sum(total.values())}")
        print(f"  opcodes differing (bidir, {against}): {differ}")
        print(f"  64-bit selects in bidir: {counts['selp.b64']}")


if __name__ == "__main__":
    main()

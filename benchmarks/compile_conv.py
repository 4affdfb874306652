"""Compile the conv+SiLU Triton kernels for an NVIDIA target without a GPU and print what decides their speed:
registers, spills, shared memory and counts of the telling PTX instructions (global / shared loads and stores,
shuffles, barriers, exp2 / divisions, fma / mul), for the whole kernel and per element of its loop. The session-5
kernels (benchmarks/conv_v5.py) are compiled beside the current ones, so a change is judged before device time is
spent. Integer arguments are specialised as a Vim-S launch sees them (channels and strides multiples of 16, the
length 197 not).

    PYTHONPATH=src python benchmarks/compile_conv.py [--arch 90] [--dtype bf16] [--dump PREFIX]
"""

from __future__ import annotations

import argparse
import os
import re
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import conv_v5  # noqa: E402  (the session-5 kernels: the "before" column)
from compile_scan import _ptxas_usage  # noqa: E402

from rmeeto.ops.triton import conv as tc  # noqa: E402

PTX_OPS = {
    "ld.global": r"\bld\.global", "st.global": r"\bst\.global", "ld.shared": r"\bld\.shared",
    "st.shared": r"\bst\.shared", "shfl": r"\bshfl\.", "bar": r"\bbar\.sync|\bbarrier\.", "ex2": r"\bex2\.",
    "div": r"\bdiv\.", "fma": r"\bfma\.rn\.f32", "mul": r"\bmul\.f32", "local": r"\b(ld|st)\.local",
    "bra": r"\bbra\b",
}
FP32_PTRS = {"dw_ptr", "db_ptr", "part_ptr"}  # partial sums
WEIGHT_PTRS = {"w_ptr", "b_ptr", "wf_ptr", "bf_ptr", "wb_ptr", "bb_ptr"}
DIVISIBLE = re.compile(r"^(D|stride_\w+)$")  # 768 channels, strides of [b, 197, 1536] / [b, 197, 768]


def compile_kernel(kernel, consts: dict, dtype: str, wdtype: str, arch: int, num_warps: int, num_stages: int = 1):
    sig, attrs = {}, {}
    for i, param in enumerate(kernel.params):
        name = param.name
        if param.is_constexpr:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*fp32" if name in FP32_PTRS else f"*{wdtype}" if name in WEIGHT_PTRS else f"*{dtype}"
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            sig[name] = "i32"
            if DIVISIBLE.match(name):
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(kernel, sig, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})


def loop_body(ptx: str):
    """The PTX of the innermost loop that computes (has exp2): from its header label to the branch back to it
    (the shortest such stretch); None without a loop."""
    bodies = []
    for m in re.finditer(r"^(\$L__BB\d+_\d+):", ptx, re.M):  # labels branched to from below them
        end = re.search(r"bra(\.uni)?\s+" + re.escape(m.group(1)) + ";", ptx[m.end():])
        if end:
            bodies.append(ptx[m.start():m.end() + end.end()])
    bodies = [b for b in bodies if re.search(PTX_OPS["ex2"], b)]  # the loop doing the maths, not a copy loop
    return min(bodies, key=len) if bodies else None


def report(name, ck, elems=None):
    """Whole-kernel counts; with ``elems`` (token x channel elements a thread handles per loop iteration) also
    the loop body's counts per element."""
    ptx = ck.asm["ptx"]
    counts = {k: len(re.findall(v, ptx)) for k, v in PTX_OPS.items()}
    print(f"{name}\n    shared={ck.metadata.shared} B {_ptxas_usage(ptx, ck.metadata.target.arch)} "
          + " ".join(f"{k}={v}" for k, v in counts.items()))
    body = loop_body(ptx)
    if body is not None and elems:
        per = {k: len(re.findall(v, body)) / elems for k, v in PTX_OPS.items() if k not in ("local", "bra")}
        print(f"    loop body per (token, channel){' (both directions)' if 'bidir' in name else ''}: "
              + " ".join(f"{k}={v:.2f}" for k, v in per.items()))
    return counts


def _cfg(cfg, *names):
    return {k: cfg[k] for k in names if k in cfg}


def kernels(dtype):
    """(label, kernel, constexprs, num_warps, num_stages, weight dtype, elements per thread and loop iteration)
    of every kernel, old and new."""
    out = []
    f = conv_v5.FWD_CONFIG
    out.append(("v5 fwd", conv_v5._conv_silu_fwd, dict(K=4, REVERSE=False, BLOCK_L=f["BLOCK_L"], BLOCK_D=f["BLOCK_D"]),
                f["num_warps"], 1, dtype, None))
    out.append(("v5 bidir fwd", conv_v5._conv_silu_bidir_fwd, dict(K=4, BLOCK_L=32, BLOCK_D=128), 4, 1, "fp32",
                None))
    for c in conv_v5.CANDIDATE_BWD[:1]:
        tiles = _cfg(c, "SPAN", "BLOCK_L", "BLOCK_D")
        elems = c["BLOCK_L"] * c["BLOCK_D"] / (32 * c["num_warps"])  # one [BLOCK_L, BLOCK_D] tile per iteration
        out.append((f"v5 bwd {c}", conv_v5._conv_silu_bwd, dict(REVERSE=False, **tiles), c["num_warps"],
                    c["num_stages"], dtype, elems))
        out.append((f"v5 bidir bwd {c}", conv_v5._conv_silu_bidir_bwd, tiles, c["num_warps"], c["num_stages"], "fp32",
                    elems))
    f = tc.FWD_CONFIG
    fwd = dict(K=4, BLOCK_L=f["BLOCK_L"], BLOCK_D=f["BLOCK_D"])
    out.append(("new fwd", tc._conv_silu_fwd, dict(fwd, FWD=True, BWD=False), f["num_warps"], 1, dtype, None))
    out.append(("new bidir fwd", tc._conv_silu_fwd, dict(fwd, FWD=True, BWD=True), f["num_warps"], 1, "fp32", None))
    configs = [c for c in tc.CANDIDATE_BWD if c != tc.BWD_CONFIG and c != tc.BIDIR_BWD_CONFIG]
    for c in [tc.BWD_CONFIG] + configs:
        tiles = _cfg(c, "SPAN", "SEQS", "BLOCK_D")
        elems = 4 * c["BLOCK_D"] / (32 * c["num_warps"])  # four token rows per iteration
        out.append((f"new bwd {c}", tc._conv_silu_bwd, dict(tiles, FWD=True, BWD=False), c["num_warps"],
                    c["num_stages"], dtype, elems))
    for c in [tc.BIDIR_BWD_CONFIG] + configs:
        tiles = _cfg(c, "SPAN", "SEQS", "BLOCK_D")
        elems = 4 * c["BLOCK_D"] / (32 * c["num_warps"])
        out.append((f"new bidir bwd {c}", tc._conv_silu_bwd, dict(tiles, FWD=True, BWD=True), c["num_warps"],
                    c["num_stages"], "fp32", elems))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--only", default=None, help="compile only kernels whose label contains this (e.g. 'bwd')")
    p.add_argument("--dump", default=None, help="write ttgir / ptx of each kernel with this path prefix")
    a = p.parse_args(argv)
    for label, kernel, consts, nw, ns, wd, elems in kernels(a.dtype):
        if a.only and a.only not in label:
            continue
        ck = compile_kernel(kernel, consts, a.dtype, wd, a.arch, nw, ns)
        report(f"{label} warps={nw} stages={ns}", ck, elems)
        if a.dump:
            tag = re.sub(r"[^\w]+", "_", label).strip("_")
            for ext in ("ttgir", "ptx"):
                with open(f"{a.dump}.{tag}.{ext}", "w") as fh:
                    fh.write(ck.asm[ext])


if __name__ == "__main__":
    main()

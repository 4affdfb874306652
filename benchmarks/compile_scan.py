"""Compile the Triton scan kernels for an NVIDIA target without a GPU and print what decides their speed:
registers, spills, shared memory and counts of the telling PTX instructions (exp2, shuffles, barriers,
shared/local memory traffic). Lets tile configurations be judged before spending device time.

    python benchmarks/compile_scan.py [--arch 90] [--dtype fp16] [--fwd BLOCK_D,CHUNK,WARPS] [--xbwd ...]

The backward is scan_bwd.py's (the dB / dC sums as a reduce-scatter across lanes), and the same body with the
per-value tl.sum reductions (XLANE=False) beside it for comparison.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from rmeeto.ops.triton import scan as ts
from rmeeto.ops.triton import scan_bwd as tsb

SASS = False  # --sass: also disassemble each kernel and count its longest loop's instructions

PTX_OPS = {
    "ex2": r"\bex2\.", "lg2": r"\blg2\.", "shfl": r"\bshfl\.", "bar": r"\bbar\.sync|\bbarrier\.",
    "ld.shared": r"\bld\.shared", "st.shared": r"\bst\.shared", "ld.global": r"\bld\.global",
    "st.global": r"\bst\.global", "local": r"\b(ld|st)\.local", "fma": r"\bfma\.rn\.f32",
}


def _signature(kernel, dtype: str) -> dict:
    sig = {}
    for param in kernel.params:
        name = param.name
        if param.is_constexpr:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*fp32" if name in {"A_ptr", "D_ptr", "bias_ptr", "ckpt_ptr", "dA_ptr", "dB_ptr", "dC_ptr",
                                            "dD_ptr", "dbias_ptr", "Af_ptr", "Ab_ptr", "Df_ptr", "Db_ptr",
                                            "biasf_ptr", "biasb_ptr"} else f"*{dtype}"
        elif name == "scale":
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def compile_kernel(kernel, consts: dict, dtype: str, arch: int, num_warps: int, maxnreg=None):
    sig = _signature(kernel, dtype)
    # pointers 16-byte aligned, the unit strides the launcher would see specialised where allowed
    attrs = {}
    for i, name in enumerate(kernel.arg_names):
        if name.endswith("_ptr"):
            attrs[(i,)] = [["tt.divisibility", 16]]
    # unit strides of B / C / A along dstate are specialised by the launcher (value 1), as on a real launch
    consts = dict(consts)
    for name in ("s_B_n", "s_C_n"):
        if name in kernel.arg_names:
            sig[name] = "constexpr"
            consts[name] = 1
    src = ASTSource(kernel, sig, constexprs=consts, attrs=attrs)
    options = {"num_warps": num_warps, "num_stages": 1}
    if maxnreg:
        options["maxnreg"] = maxnreg
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


def _ptxas_usage(ptx: str, arch) -> str:
    """Registers / spill bytes as ptxas reports them (ptxas ships with Triton)."""
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        res = subprocess.run([ptxas, f"-arch=sm_{arch}a" if arch == 90 else f"-arch=sm_{arch}", "-v", f.name,
                              "-o", os.devnull], capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    info = res.stderr
    regs = re.search(r"Used (\d+) registers", info)
    spill = re.search(r"(\d+) bytes spill stores", info)
    return f"regs={regs.group(1) if regs else '?'} spill_bytes={spill.group(1) if spill else '?'}"


def sass_loops(cubin: bytes, arch) -> list:
    """The loops of a compiled kernel's SASS (nvdisasm from the Triton wheel): for every backward branch, the
    instructions from its target label to the branch, as (count, Counter of opcodes without modifiers), longest
    first. A kernel that steps through tokens in one loop spends its time in the first."""
    nvdisasm = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        res = subprocess.run([nvdisasm, "-c", f.name], capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    return loops_of(res.stdout)


def loops_of(sass: str) -> list:
    """sass_loops on nvdisasm's text (separate for tests)."""
    ops, labels, loops = [], {}, []
    for line in sass.splitlines():
        lab = re.match(r"^(\.L_x_\d+):", line)
        if lab:
            labels[lab.group(1)] = len(ops)
            continue
        m = re.match(r"\s*/\*[0-9a-f]+\*/\s*(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)[\w.]*(.*)", line)
        if not m:
            continue
        ops.append(m.group(1))
        tgt = re.search(r"`\((\.L_x_\d+)\)", m.group(2)) if m.group(1) == "BRA" else None
        if tgt and tgt.group(1) in labels and labels[tgt.group(1)] < len(ops):
            body = ops[labels[tgt.group(1)]:]
            loops.append((len(body), collections.Counter(body)))
    return sorted(loops, key=lambda x: -x[0])


def report(name, ck):
    ptx = ck.asm["ptx"]
    counts = {k: len(re.findall(v, ptx)) for k, v in PTX_OPS.items()}
    md = ck.metadata
    print(f"{name}: shared={md.shared} B {_ptxas_usage(ptx, md.target.arch)} "
          + " ".join(f"{k}={v}" for k, v in counts.items()))
    if SASS and "cubin" in ck.asm:
        loops = sass_loops(ck.asm["cubin"], md.target.arch)
        if loops:
            n, hist = loops[0]
            print(f"    longest loop: {n} SASS instructions: " + " ".join(f"{k}={v}" for k, v in hist.most_common(12)))
    return ck


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--dtype", default="fp16")
    p.add_argument("--fwd", default=None, help="BLOCK_D,CHUNK,num_warps (default FWD_CONFIG)")
    p.add_argument("--xbwd", default=None, help="BLOCK_D,CHUNK,num_warps of scan_bwd's kernel (default "
                   "BWD_XLANE_CONFIG)")
    p.add_argument("--maxnreg", type=int, default=None, help="register cap of scan_bwd's kernel (default: "
                   "its config's)")
    p.add_argument("--reload-bc", action="store_true", help="scan_bwd's kernel with reuse_bc=False")
    p.add_argument("--prefetch", action="store_true", help="scan_bwd's kernel with prefetch=True")
    p.add_argument("--pack", type=int, default=None, choices=[0, 1, 2, 3],
                   help="how B / C are read (scan._bc_mode): 2 16-bit vector rows (Vim-S / B in 16 bits), 1 16-bit "
                   "pairs, 3 float32 vector rows (--dtype fp32), 0 one element at a time; default: the vector rows "
                   "of --dtype")
    p.add_argument("--fwd-prefetch", type=int, default=None, choices=[0, 1],
                   help="the forward kernels with PREFETCH off / on (default: FWD_CONFIG's)")
    p.add_argument("--sass", action="store_true", help="also count the SASS instructions of each kernel's longest "
                   "loop (its time step), by opcode; nvdisasm ships with Triton")
    p.add_argument("--dump", default=None, help="write ttgir/ptx of both kernels with this path prefix")
    a = p.parse_args()
    global SASS
    SASS = a.sass
    if a.pack is None:
        a.pack = 3 if a.dtype == "fp32" else 2
    if (a.pack == 3) != (a.dtype == "fp32") and a.pack != 0:
        p.error(f"--pack {a.pack} reads {'float32' if a.pack == 3 else '16-bit'} B / C: it does not go with --dtype {a.dtype}")
    flags = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, PACK=a.pack, A_IS_LOG=False, NP=16)
    fwd_flags = {}
    if "PREFETCH" in ts._scan_fwd_kernel.arg_names:  # (older trees' forwards have none)
        fwd_flags["PREFETCH"] = ts.FWD_CONFIG.get("prefetch", False) if a.fwd_prefetch is None else bool(a.fwd_prefetch)
    xcfg = tsb.BWD_XLANE_CONFIG
    bwd_flags = dict(REUSE_BC=xcfg.get("reuse_bc", True) and not a.reload_bc,
                     PREFETCH=xcfg.get("prefetch", False) or a.prefetch)
    one_dir = dict(REVERSE=False)  # the two-direction kernels have no REVERSE flag: the direction is a runtime value
    kernels = [("fwd", ts._scan_fwd_kernel, ts.FWD_CONFIG, a.fwd, dict(fwd_flags, **one_dir)),
               ("bidir fwd", ts._scan_bidir_fwd_kernel, ts.FWD_CONFIG, a.fwd, fwd_flags),
               # scan_bwd.py: the dB / dC sums as a reduce-scatter across lanes, and with per-value tl.sum
               ("xlane bwd", tsb._scan_bwd_xlane_kernel, xcfg, a.xbwd, dict(bwd_flags, XLANE=True, **one_dir)),
               ("xlane bidir bwd", tsb._scan_bwd_bidir_xlane_kernel, xcfg, a.xbwd, dict(bwd_flags, XLANE=True)),
               ("tl.sum bwd", tsb._scan_bwd_xlane_kernel, xcfg, a.xbwd, dict(bwd_flags, XLANE=False, **one_dir)),
               ("tl.sum bidir bwd", tsb._scan_bwd_bidir_xlane_kernel, xcfg, a.xbwd, dict(bwd_flags, XLANE=False))]
    for which, kernel, cfg, arg, extra in kernels:
        if arg:
            bd, ch, nw = (int(x) for x in arg.split(","))
        else:
            bd, ch, nw = cfg["BLOCK_D"], cfg["CHUNK"], cfg["num_warps"]
        mr = (a.maxnreg or cfg.get("maxnreg")) if which.endswith("bwd") else None
        ck = compile_kernel(kernel, dict(flags, **extra, BLOCK_D=bd, CHUNK=ch), a.dtype, a.arch, nw, mr)
        report(f"{which} BLOCK_D={bd} CHUNK={ch} warps={nw}" + (f" maxnreg={mr}" if mr else ""), ck)
        if a.dump:
            for ext in ("ttgir", "ptx"):
                with open(f"{a.dump}.{which.replace(' ', '_')}.{ext}", "w") as f:
                    f.write(ck.asm[ext])


if __name__ == "__main__":
    main()

"""The one-launch matching kernel compiled for a GPU target on a machine without one (Triton's ``triton.compile`` with
a ``GPUTarget``; ptxas ships with Triton), and its machine code summarised: registers, local memory, loads by width,
block barriers, tensor-core ops, and each loop's instruction count. For reading what a change does to the code
between device calls; not a timing. The integer arguments and pointers get the divisibility attributes a launch
at the given shape would give them (Triton specialises ints that are multiples of 16 and 16-byte-aligned
pointers), so loads vectorise as they do on the device. The device's Triton may be another version than this
machine's and compile differently.

    PYTHONPATH=src python benchmarks/match_sass_cpu.py [--tokens 197] [--channels 384] [-r 11] [--arch 90]
        [--set compact_max_r=None] [--norm-only --set norm_lists_only=True] [--sass out.sass]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from _match_set import add_set_argument, set_match_config
from rmeeto.merge import plan_cls_index
from rmeeto.ops.triton import merge as mt

# element types of the kernel's pointer parameters (``*_ptr``) other than the metric's: int32 unless named here
_POINTERS = {"vmax_ptr": "*fp32", "dest_ptr": "*i64"}


def compile_match(batch: int, L: int, C: int, r: int, arch: int, dtype=torch.float16, norm_only: bool = False):
    """The compiled ``_match_kernel`` for a [batch, L, C] metric, r merged, class token in the middle (as the
    inference merge + norm launches it with ``norm_only``)."""
    metric = torch.empty(batch, L, C, dtype=dtype)
    cls = L // 2
    grid, tail, meta = mt.match_spec(metric, cls, r, plan_cls_index(cls, L, r, True), True, norm_only)
    if grid is None:
        raise SystemExit("this shape takes the two-kernel matching, not the one-launch kernel")
    meta = dict(meta)
    options = {"num_warps": meta.pop("num_warps"), "num_stages": meta.pop("num_stages")}
    fn = mt._match_kernel
    values = dict(zip(("s_mb", "s_ml"), metric.stride()[:2]))
    values.update(zip(("L", "C", "cls", "new_cls", "R", "L_out"), tail))
    elem = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32"}[dtype]
    signature, constexprs, attrs = {}, {}, {}
    for idx, param in enumerate(fn.params):
        name = param.name
        if param.is_constexpr:
            signature[name] = "constexpr"
            constexprs[name] = meta.get(name, param.default)
        elif name.endswith("_ptr"):
            signature[name] = elem if name == "m_ptr" else _POINTERS.get(name, "*i32")
            attrs[(idx,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "i32"
            if values.get(name, 1) % 16 == 0:
                attrs[(idx,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options), constexprs


def summarise(cubin: bytes, by_opcode: bool = False) -> str:
    """Resource use and an instruction census of ``cubin`` (cuobjdump from Triton's NVIDIA backend); with
    ``by_opcode`` each loop's count of every opcode too."""
    bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage, sass = (subprocess.run([os.path.join(bindir, "cuobjdump"), flag, f.name], capture_output=True,
                                      text=True).stdout for flag in ("--dump-resource-usage", "-sass"))
    lines = []
    for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)(.*?);", sass):
        lines.append((int(m.group(1), 16), m.group(3), m.group(4)))
    ops = collections.Counter(op.split(".")[0] for _, op, _ in lines)
    loads = collections.Counter(op for _, op, _ in lines if op.startswith(("LDG", "LDS", "LDSM")))
    out = [re.sub(r"\s+", " ", next((u for u in usage.splitlines() if "REG:" in u), "")).strip(),
           f"instructions {len(lines)}, block barriers {ops['BAR']}, shuffles {ops['SHFL']}, "
           f"tensor-core ops {ops['HGMMA'] + ops['HMMA']}, stores to global {ops['STG']}, to shared {ops['STS']}",
           "loads: " + ", ".join(f"{op} {n}" for op, n in sorted(loads.items()))]
    # loops: a branch back to an earlier address; the body's instruction count, barriers and loads
    for pc, op, rest in lines:
        target = re.search(r"0x([0-9a-f]+)", rest)
        if op == "BRA" and target and int(target.group(1), 16) < pc:
            start = int(target.group(1), 16)
            body = [o for p, o, _ in lines if start <= p <= pc]
            c = collections.Counter(o.split(".")[0] for o in body)
            out.append(f"loop {start:#06x}-{pc:#06x}: {len(body)} instructions, {c['LDG']} global loads, "
                       f"{c['BAR']} barriers, {c['HGMMA'] + c['HMMA']} tensor-core ops, {c['SHFL']} shuffles")
            if by_opcode:
                out.append("  by opcode: " + ", ".join(f"{op} {n}" for op, n in c.most_common()))
    return "\n".join(out), sass


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=197)
    ap.add_argument("--channels", type=int, default=384)
    ap.add_argument("-r", type=int, default=11)
    ap.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: Hopper)")
    add_set_argument(ap)
    ap.add_argument("--norm-only", action="store_true",
                    help="as the inference merge + norm launches it (with MATCH_CONFIG['norm_lists_only'])")
    ap.add_argument("--sass", default=None, help="also write the whole SASS listing here")
    a = ap.parse_args()
    set_match_config(a.set, ap.error)
    kernel, constexprs = compile_match(a.batch, a.tokens, a.channels, a.r, a.arch, norm_only=a.norm_only)
    text, sass = summarise(kernel.asm["cubin"])
    chosen = {k: constexprs[k] for k in ("BLOCK_T", "BLOCK_J", "BLOCK_C", "UNROLL", "ONE_TILE", "RB", "NORM_ONLY")}
    print(f"_match_kernel, sm_{a.arch}, Triton {triton.__version__}: {a.tokens} tokens, {a.channels} channels, "
          f"r={a.r}; {chosen}")
    print(text)
    if a.sass:
        with open(a.sass, "w") as f:
            f.write(sass)


if __name__ == "__main__":
    main()

"""Compile the fused-merge Triton kernels for an NVIDIA target without a GPU and print registers, spills, shared
memory and PTX instruction counts (as benchmarks/compile_scan.py does for the scan), for every best-partner
tiling in ``PARTNER_TILES``, every tiling of the one-launch match kernel in ``MATCH_TILES`` and the plan and
merge kernels at Vim-S shapes.

    PYTHONPATH=src python benchmarks/compile_merge.py [--arch 90] [--dtype fp16]
"""

from __future__ import annotations

import argparse

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from compile_scan import report
from rmeeto.ops.triton import merge as tm

# pointer parameters and what they point at ("metric": the metric's / streams' dtype)
_POINTERS = {"m_ptr": "metric", "h_ptr": "metric", "ho_ptr": "metric", "r_ptr": "fp32", "ro_ptr": "fp32",
             "s_ptr": "fp32", "so_ptr": "fp32", "vmax_ptr": "fp32", "dest_ptr": "i64"}


def compile_kernel(kernel, consts: dict, dtype: str, arch: int, num_warps: int, num_stages: int):
    """Every pointer 16-byte aligned (as the launcher sees fresh allocations), every other integer an i32."""
    sig, attrs = {}, {}
    for i, param in enumerate(kernel.params):
        if param.is_constexpr:
            sig[param.name] = "constexpr"
        elif param.name.endswith("_ptr"):
            kind = _POINTERS.get(param.name, "i32")
            sig[param.name] = "*" + (dtype if kind == "metric" else kind)
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            sig[param.name] = "i32"
    src = ASTSource(kernel, sig, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--dtype", default="fp16")
    a = p.parse_args()
    for tile_a, tile_b, step_c, warps, stages in tm.PARTNER_TILES:
        consts = dict(IEEE=a.dtype == "fp32", BLOCK_T=tile_a, BLOCK_C=step_c, BLOCK_J=tile_b, NORM_C=32)
        report(f"best_partner tiles {(tile_a, tile_b, step_c, warps, stages)}",
               compile_kernel(tm._best_partner_kernel, consts, a.dtype, a.arch, warps, stages))
    for tile_a, tile_b, step_c, warps, unroll, plan_t in getattr(tm, "MATCH_TILES", []):
        consts = dict(IEEE=a.dtype == "fp32", ORDERED=True, BLOCK_T=tile_a, BLOCK_C=step_c, BLOCK_J=tile_b,
                      NORM_C=32, PLAN_T=plan_t, BLOCK_A=128, BLOCK_K=32, UNROLL=unroll, ONE_J=tile_b >= 98)
        report(f"match (partner + plan) tiles {(tile_a, tile_b, step_c, warps, unroll, plan_t)}",
               compile_kernel(tm._match_kernel, consts, a.dtype, a.arch, warps, 1))
    for ordered in (True, False):
        consts = dict(ORDERED=ordered, BLOCK_T=tm._PLAN_TILE, BLOCK_A=128, BLOCK_K=32)
        report(f"plan ordered={ordered} (98 sources)", compile_kernel(tm._plan_kernel, consts, a.dtype, a.arch, 4, 3))
    report("merge C=384 with sizes", compile_kernel(tm._merge_fwd_kernel, dict(HAS_SIZE=True, BLOCK_C=512), a.dtype,
                                                    a.arch, 4, 3))


if __name__ == "__main__":
    main()

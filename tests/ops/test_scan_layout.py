"""The forward scan kernels compile for sm_90 (no GPU needed: Triton ships ptxas) to the layout they were written
for: every thread keeps its channels' whole state and chunk in registers, so the kernel needs no shared memory,
spills nothing and, with one channel per lane, issues no warp shuffle at all. A layout regression (e.g. a 2-D
load whose strides Triton cannot see letting its coalescing pass spread the chunk or dstate axis over lanes, as
Triton 3.6 does) shows up here as shared memory, barriers or shuffles long before a GPU benchmark would see it.
"""

import re

import pytest

triton = pytest.importorskip("triton")

from rmeeto.ops.triton import scan as ts  # noqa: E402

FLAGS = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, PACK=True, A_IS_LOG=False, NP=16)
FP32_PTRS = {"A_ptr", "D_ptr", "bias_ptr", "Af_ptr", "Ab_ptr", "Df_ptr", "Db_ptr", "biasf_ptr", "biasb_ptr"}


def _compile(kernel, consts: dict, num_warps: int):
    """The kernel compiled for sm_90 with fp16 tensors, as the launcher would see them (16-byte aligned
    pointers, unit dstate strides of B and C specialised, every other integer unspecialised)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig, attrs, consts = {}, {}, dict(consts)
    for i, p in enumerate(kernel.params):
        if p.is_constexpr:
            sig[p.name] = "constexpr"
        elif p.name.endswith("_ptr"):
            sig[p.name] = "*fp32" if p.name in FP32_PTRS else "*fp16"
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif p.name == "scale":
            sig[p.name] = "fp32"
        elif p.name in ("s_B_n", "s_C_n"):
            sig[p.name] = "constexpr"
            consts[p.name] = 1
        else:
            sig[p.name] = "i32"
    src = ASTSource(kernel, sig, constexprs=consts, attrs=attrs)
    try:
        return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "num_stages": 1})
    except (RuntimeError, FileNotFoundError) as e:  # no ptxas / CUDA backend in this Triton build
        pytest.skip(f"cannot compile for sm_90 here: {e}")


# (BLOCK_D, CHUNK, num_warps): one channel per lane, as the single-warp and multi-warp candidates use
@pytest.mark.parametrize("cfg", [(32, 2, 1), (64, 4, 2)])
@pytest.mark.parametrize("bidir", [False, True], ids=["fwd", "bidir_fwd"])
@pytest.mark.parametrize("prefetch", [False, True], ids=["", "prefetch"])
def test_forward_keeps_chunk_and_state_in_thread(cfg, bidir, prefetch):
    bd, chunk, nw = cfg
    consts = dict(FLAGS, BLOCK_D=bd, CHUNK=chunk, PREFETCH=prefetch)
    if bidir:
        kernel = ts._scan_bidir_fwd_kernel
    else:
        kernel, consts["REVERSE"] = ts._scan_fwd_kernel, False
    ck = _compile(kernel, consts, nw)
    ptx = ck.asm["ptx"]
    assert ck.metadata.shared == 0, f"{ck.metadata.shared} B of shared memory: a layout conversion"
    assert not re.search(r"\bshfl\.", ptx), "a warp shuffle: some tile's chunk or dstate axis sits across lanes"
    assert not re.search(r"\bbar\.sync|\bbarrier\.", ptx)
    assert not re.search(r"\b(ld|st)\.local", ptx), "register spills"

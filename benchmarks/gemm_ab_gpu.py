"""A Vim block's two big GEMMs (in_proj, and out_proj after the directions' sum) at every token count of the
paper's merge schedule, by backend: cuBLAS as PyTorch calls it, cuBLASLt (``preferred_blas_library``), and Triton
kernels (plain tiles, persistent tiles over tensor descriptors, and out_proj with the directions' sum read in its
prologue, which no library GEMM can do). Graphed time per call, summed over the schedule: what each backend would
save in the merged and the unmerged forward, and so what it would do to the merged / unmerged ratio.

    PYTHONPATH=src python3 benchmarks/gemm_ab_gpu.py [--models S] [--reps 15] [--backends cublas,tma,tmadev] [--eager]
        [--ops in]

Under PYTORCH_TUNABLEOP_ENABLED=1 PYTORCH_TUNABLEOP_TUNING=1, "cublas" is PyTorch's TunableOp choice. Backend
"tmadev": the persistent TMA tiles with descriptors made on the device (no host work per call beyond the launch);
``--all`` prints every tiling's time; ``--eager`` adds each backend's best tiles called without a graph (host work included). Backend "tmas": the
persistent TMA tiles with two or three programs per SM (``CONFIGS_SHARED``).
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F

from bench_merge_gpu import _event_ms, _graphed
from rmeeto.merge import MergeConfig

import triton
import triton.language as tl

_SMS = None

MODELS = {"Ti": (192, 384, 5), "S": (384, 768, 11), "B": (768, 1536, 11)}  # d_model, d_inner, r (paper preset)


@triton.jit
def _gemm_kernel(a_ptr, a2_ptr, w_ptr, c_ptr, M, N, K, s_am, s_wn, s_cm,
                 BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr, TWO_A: tl.constexpr):
    """c[M, N] = a[M, K] @ w[N, K]^T (a = a + a2 rounded to a's dtype when TWO_A), float32 sums."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BM)
    num_n = tl.cdiv(N, BN)
    group = GROUP_M * num_n
    first_m = (pid // group) * GROUP_M
    gsz = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % gsz
    pid_n = (pid % group) // gsz
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    mm = rm[:, None] < M
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, K, BK):
        offs = rm[:, None] * s_am + (k + rk)[None, :]
        a = tl.load(a_ptr + offs, mask=mm, other=0.0)
        if TWO_A:
            a = (a.to(tl.float32) + tl.load(a2_ptr + offs, mask=mm, other=0.0).to(tl.float32)).to(a_ptr.dtype.element_ty)
        w = tl.load(w_ptr + rn[None, :] * s_wn + (k + rk)[:, None], mask=rn[None, :] < N, other=0.0)
        acc = tl.dot(a, w, acc)
    tl.store(c_ptr + rm[:, None] * s_cm + rn[None, :], acc.to(c_ptr.dtype.element_ty), mask=mm & (rn[None, :] < N))


@triton.jit
def _tma_tiles(a_desc, a2_desc, w_desc, c_desc, M, N, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
               GROUP_M: tl.constexpr, TWO_A: tl.constexpr, NUM_PROGS: tl.constexpr):
    """The same product, persistent: NUM_PROGS programs walk the output tiles (grouped order) over TMA loads."""
    start = tl.program_id(0)
    num_m = tl.cdiv(M, BM)
    num_n = tl.cdiv(N, BN)
    tiles = num_m * num_n
    group = GROUP_M * num_n
    for tile in tl.range(start, tiles, NUM_PROGS, flatten=True):
        first_m = (tile // group) * GROUP_M
        gsz = min(num_m - first_m, GROUP_M)
        pid_m = first_m + (tile % group) % gsz
        pid_n = (tile % group) // gsz
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k in range(0, K, BK):
            a = a_desc.load([pid_m * BM, k])
            if TWO_A:
                a = (a.to(tl.float32) + a2_desc.load([pid_m * BM, k]).to(tl.float32)).to(a.dtype)
            w = w_desc.load([pid_n * BN, k])
            acc = tl.dot(a, w.T, acc)
        c_desc.store([pid_m * BM, pid_n * BN], acc.to(c_desc.dtype))


@triton.jit
def _gemm_tma_kernel(a_desc, a2_desc, w_desc, c_desc, M, N, K, BM: tl.constexpr, BN: tl.constexpr,
                     BK: tl.constexpr, GROUP_M: tl.constexpr, TWO_A: tl.constexpr, NUM_PROGS: tl.constexpr):
    """:func:`_tma_tiles` over descriptors made on the host (one per tensor and call)."""
    _tma_tiles(a_desc, a2_desc, w_desc, c_desc, M, N, K, BM, BN, BK, GROUP_M, TWO_A, NUM_PROGS)


@triton.jit
def _gemm_tma_dev_kernel(a_ptr, a2_ptr, w_ptr, c_ptr, M, N, K, BM: tl.constexpr, BN: tl.constexpr,
                         BK: tl.constexpr, GROUP_M: tl.constexpr, TWO_A: tl.constexpr, NUM_PROGS: tl.constexpr):
    """:func:`_tma_tiles` over descriptors made on the device (``tl.make_tensor_descriptor``, scratch from
    ``triton.set_allocator``): no host-side descriptor per call, so an eager call costs one plain launch."""
    _tma_tiles(tl.make_tensor_descriptor(a_ptr, shape=[M, K], strides=[K, 1], block_shape=[BM, BK]),
               tl.make_tensor_descriptor(a2_ptr, shape=[M, K], strides=[K, 1], block_shape=[BM, BK]),
               tl.make_tensor_descriptor(w_ptr, shape=[N, K], strides=[K, 1], block_shape=[BN, BK]),
               tl.make_tensor_descriptor(c_ptr, shape=[M, N], strides=[N, 1], block_shape=[BM, BN]),
               M, N, K, BM, BN, BK, GROUP_M, TWO_A, NUM_PROGS)


def _scratch(size: int, alignment: int, stream):
    """Device memory for the device-made descriptors (Triton's allocator hook)."""
    return torch.empty(size, dtype=torch.int8, device="cuda" if torch.cuda.is_available() else "cpu")


def gemm(a, w, a2=None, cfg=(128, 128, 64, 8, 3, 8, 1)):
    BM, BN, BK, warps, stages, group = cfg[:6]
    M, K = a.shape
    N = w.shape[0]
    c = torch.empty(M, N, device=a.device, dtype=a.dtype)
    grid = (triton.cdiv(M, BM) * triton.cdiv(N, BN),)
    _gemm_kernel[grid](a, a if a2 is None else a2, w, c, M, N, K, a.stride(0), w.stride(0), c.stride(0),
                       BM=BM, BN=BN, BK=BK, GROUP_M=group, TWO_A=a2 is not None, num_warps=warps, num_stages=stages)
    return c


def gemm_tma(a, w, a2=None, cfg=(128, 128, 64, 8, 3, 8, 1), on_device=False):
    """The persistent TMA tiles; ``on_device``: their descriptors made by the kernel, else on the host. ``cfg``'s
    last entry: programs per SM (2 or 3: one program's epilogue can run beside another's loads and dots)."""
    global _SMS
    if _SMS is None:
        _SMS = torch.cuda.get_device_properties(a.device).multi_processor_count if a.is_cuda else 4
    BM, BN, BK, warps, stages, group, per_sm = cfg
    M, K = a.shape
    N = w.shape[0]
    c = torch.empty(M, N, device=a.device, dtype=a.dtype)
    progs = min(per_sm * _SMS, triton.cdiv(M, BM) * triton.cdiv(N, BN))
    meta = dict(BM=BM, BN=BN, BK=BK, GROUP_M=group, TWO_A=a2 is not None, NUM_PROGS=progs, num_warps=warps,
                num_stages=stages)
    a2 = a if a2 is None else a2
    if on_device:
        triton.set_allocator(_scratch)
        _gemm_tma_dev_kernel[(progs,)](a, a2, w, c, M, N, K, **meta)
    else:
        from triton.tools.tensor_descriptor import TensorDescriptor
        ad = TensorDescriptor.from_tensor(a, [BM, BK])
        _gemm_tma_kernel[(progs,)](ad, ad if a2 is a else TensorDescriptor.from_tensor(a2, [BM, BK]),
                                   TensorDescriptor.from_tensor(w, [BN, BK]), TensorDescriptor.from_tensor(c, [BM, BN]),
                                   M, N, K, **meta)
    return c


def schedule(name: str) -> list[int]:
    """Tokens each of the 24 layers processes under the paper preset of Vim-``name`` (after its merge, the
    final-token rule included: Vim-Ti's layer 22 merges 71 tokens)."""
    model = {"Ti": "vim_tiny_patch16_224", "S": "vim_small_patch16_224", "B": "vim_base_patch16_224"}[name]
    return [s.tokens_out for s in MergeConfig.paper(model).schedule(197, 24)]


CONFIGS = [  # BM, BN, BK, warps, stages, group, programs per SM (persistent backends; the plain tiles take 1s only)
    (128, 128, 64, 8, 3, 8, 1), (128, 128, 64, 4, 4, 8, 1), (128, 256, 64, 8, 3, 8, 1), (256, 128, 64, 8, 3, 8, 1),
    (64, 256, 64, 4, 4, 8, 1), (128, 64, 64, 4, 4, 8, 1), (64, 128, 64, 4, 4, 8, 1),
    (128, 128, 128, 4, 3, 8, 1), (128, 128, 128, 8, 3, 8, 1),
]
# Several programs per SM (thirty-eighth session): shared memory for each (stages x (A + W tiles) + the C tile)
# within half or a third of the SM's 227 KB
CONFIGS_SHARED = [
    (128, 128, 64, 4, 2, 8, 2), (128, 128, 32, 4, 3, 8, 2), (128, 128, 32, 4, 4, 8, 2), (128, 64, 64, 4, 3, 8, 2),
    (128, 64, 64, 4, 2, 8, 3), (64, 128, 64, 4, 3, 8, 2), (64, 128, 64, 4, 2, 8, 3), (128, 128, 64, 8, 2, 8, 2),
    (64, 256, 64, 4, 2, 8, 2), (128, 64, 32, 4, 4, 8, 3), (64, 128, 32, 4, 4, 8, 3),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="S")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--inner", type=int, default=10)
    ap.add_argument("--backends", default="cublas,cublaslt,triton,tma",
                    help="of cublas, cublaslt, triton, tma (host-made descriptors), tmas (the same, 2-3 programs "
                         "per SM: CONFIGS_SHARED), tmadev (device-made)")
    ap.add_argument("--ops", default="in,out", help="of in (in_proj), out (sum + out_proj)")
    ap.add_argument("--all", action="store_true", help="print every tiling's time, not only each backend's best")
    ap.add_argument("--eager", action="store_true",
                    help="also each backend's best tiles called eagerly (host work included), us per call")
    a = ap.parse_args()
    tunable = os.environ.get("PYTORCH_TUNABLEOP_ENABLED") == "1"
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, "
          f"TunableOp {'on' if tunable else 'off'}", flush=True)
    backends = a.backends.split(",")
    for name in a.models.split(","):
        dm, di, r = MODELS[name]
        sched = schedule(name)
        lengths = sorted(set(sched), reverse=True)
        print(f"== Vim-{name}: d_model {dm}, d_inner {di}, tokens per layer {sched}", flush=True)
        torch.manual_seed(0)
        w_in = (torch.randn(2 * di, dm, device="cuda") / dm ** 0.5).half()
        w_out = (torch.randn(dm, di, device="cuda") / di ** 0.5).half()
        per = {}  # (backend, op, L) -> us
        for L in lengths:
            M = 128 * L
            x = torch.randn(M, dm, device="cuda", dtype=torch.float16)
            yf, yb = (torch.randn(M, di, device="cuda", dtype=torch.float16) for _ in range(2))
            ref_in = (x.float() @ w_in.float().T)
            ref_out = ((yf + yb).float() @ w_out.float().T)
            row = []
            for be in backends:
                cands = {}
                if be in ("cublas", "cublaslt"):
                    torch.backends.cuda.preferred_blas_library(be)
                    cands[("in", None)] = lambda: F.linear(x, w_in)
                    cands[("out", None)] = lambda: F.linear(torch.add(yf, yb), w_out)
                else:
                    fn = {"triton": gemm, "tma": gemm_tma, "tmas": gemm_tma,
                          "tmadev": lambda *args: gemm_tma(*args, on_device=True)}[be]
                    for cfg in CONFIGS_SHARED if be == "tmas" else CONFIGS:
                        cands[("in", cfg)] = (lambda c=cfg: fn(x, w_in, None, c))
                        cands[("out", cfg)] = (lambda c=cfg: fn(yf, w_out, yb, c))
                best = {}
                for (op, cfg), f in cands.items():
                    if op not in a.ops.split(","):
                        continue
                    try:
                        got = f()
                        ref = ref_in if op == "in" else ref_out
                        err = ((got.float() - ref).abs().max() / ref.abs().max()).item()
                        if err > 5e-3:
                            print(f"   {be} {op} {cfg}: wrong (rel err {err:.2e})", flush=True)
                            continue
                        us = 1e3 * _event_ms(_graphed(f), a.reps, a.inner)
                        if a.all and cfg is not None:
                            print(f"   {be} {op} L={L} {cfg}: {us:.1f}", flush=True)
                    except Exception as e:  # a tile that does not compile or fit
                        print(f"   {be} {op} {cfg}: {type(e).__name__}: {str(e)[:120]}", flush=True)
                        continue
                    if op not in best or us < best[op][0]:
                        best[op] = (us, cfg)
                for op, (us, cfg) in best.items():
                    per[(be, op, L)] = us
                    row.append(f"{be} {op} {us:.1f}" + (f" {cfg}" if cfg else ""))
                    if a.eager:  # the same call without a graph: its host work too (a launch, descriptors)
                        eager_us = 1e3 * _event_ms(cands[(op, cfg)], a.reps, a.inner)
                        row.append(f"{be} {op} eager {eager_us:.1f}")
            torch.backends.cuda.preferred_blas_library("cublas")
            print(f"  L={L} M={M}: " + "; ".join(row), flush=True)
        ops = a.ops.split(",")
        print(f"  summed over the schedule (us per forward), {' + '.join(ops)}:", flush=True)
        base = None
        for be in backends:
            if not all((be, op, L) in per for op in ops for L in lengths):
                continue
            un = 24 * sum(per[(be, op, 197)] for op in ops)
            me = sum(per[(be, op, L)] for op in ops for L in sched)
            if base is None:
                base = (un, me)
            print(f"    {be}: unmerged {un:.0f}, merged {me:.0f}, merged excess over token share "
                  f"{me - un * sum(sched) / (24 * 197):+.0f}; saves {base[0] - un:+.0f} / {base[1] - me:+.0f}",
                  flush=True)
        if base is None:
            continue

        def best(op, L):  # the best backend per shape (what a table by row count would give)
            return min(per[(be, op, L)] for be in backends if (be, op, L) in per)
        un = 24 * sum(best(op, 197) for op in ops)
        me = sum(best(op, L) for op in ops for L in sched)
        print(f"    best per shape: unmerged {un:.0f}, merged {me:.0f}; saves {base[0] - un:+.0f} / {base[1] - me:+.0f}",
              flush=True)


if __name__ == "__main__":
    main()

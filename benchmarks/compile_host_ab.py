"""Host time of a compiled inference forward, by how its opaque ops are registered: ``torch.library.custom_op``
(as shipped: rmeeto::mixer_inference, rmeeto::match_merge_add_norm) against plain ``torch.library.Library``
definitions of the same two ops (no Python autograd wrapper in the call). fp16 Vim, paper merge, no_grad.

    PYTHONPATH=src python3 benchmarks/compile_host_ab.py [--model vim_small_patch16_224] [--calls 30]

Per variant: host ms per forward at batch 1 (the GPU idles: wall = host), and ms per forward at batch 128.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import rmeeto
from rmeeto.merge import MergeConfig
from rmeeto.ops.triton import merge as tm
from rmeeto.ops.triton import mixer as tmix

_SHIPPED = (tmix._mixer_op, tm._match_merge_add_norm_op)


def _library_ops():
    lib = torch.library.Library("rmeeto_ab", "FRAGMENT")
    lib.define("mixer(Tensor hidden, Tensor w_in, Tensor? b_in, Tensor conv_w, Tensor conv_b, Tensor conv_w_b, "
               "Tensor conv_b_b, Tensor x_proj, Tensor x_proj_b, Tensor dt_proj, Tensor dt_proj_b, Tensor dt_bias, "
               "Tensor dt_bias_b, Tensor A_log, Tensor A_b_log, Tensor D, Tensor D_b, Tensor w_out, Tensor? b_out, "
               "int d_state, float scale) -> Tensor")
    lib.define("merge(Tensor hidden, Tensor residual, Tensor? size, Tensor metric, int cls_index, int num_merged, "
               "int new_cls_index, bool ordered, Tensor weight, float eps) -> (Tensor, Tensor, Tensor)")
    mixer_impl = _SHIPPED[0]._init_fn if hasattr(_SHIPPED[0], "_init_fn") else None
    if mixer_impl is None:
        raise SystemExit("custom_op without _init_fn: update this script")
    lib.impl("mixer", mixer_impl, "CUDA")
    lib.impl("merge", _SHIPPED[1]._init_fn, "CUDA")
    torch.library.register_fake("rmeeto_ab::mixer", _SHIPPED[0]._abstract_fn, lib=lib)
    torch.library.register_fake("rmeeto_ab::merge", _SHIPPED[1]._abstract_fn, lib=lib)
    return lib, torch.ops.rmeeto_ab.mixer.default, torch.ops.rmeeto_ab.merge.default


def host_ms(fn, x, calls):
    times = []
    for _ in range(5):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn(x)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) / calls * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vim_small_patch16_224")
    ap.add_argument("--calls", type=int, default=30)
    a = ap.parse_args()
    lib, mixer_op, merge_op = _library_ops()
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}; {a.model}, fp16, compiled, no_grad")
    for round_ in range(2):
        for variant in ("custom_op", "library"):
            tmix._mixer_op, tm._match_merge_add_norm_op = _SHIPPED if variant == "custom_op" else (mixer_op, merge_op)
            for merged in (False, True):
                m = rmeeto.create_model(a.model).cuda().eval().half()
                if merged:
                    rmeeto.apply_merge(m, MergeConfig.paper(a.model))
                torch._dynamo.reset()
                c = torch.compile(m)
                row = []
                try:
                    with torch.no_grad():
                        for batch, calls in ((1, a.calls), (128, 10)):
                            x = torch.randn(batch, 3, 224, 224, device="cuda").half()
                            for _ in range(3):
                                c(x)
                            row.append(host_ms(c, x, calls))
                except Exception as exc:  # the other variant must still run
                    print(f"round {round_} {variant} merged={merged}: {type(exc).__name__}: {str(exc)[:300]}")
                    continue
                print(f"round {round_} {variant:9s} {'merged' if merged else 'unmerged':8s}: batch 1 {row[0]:.3f} ms, "
                      f"batch 128 {row[1]:.3f} ms", flush=True)
                del m, c
    tmix._mixer_op, tm._match_merge_add_norm_op = _SHIPPED
    del lib


if __name__ == "__main__":
    main()

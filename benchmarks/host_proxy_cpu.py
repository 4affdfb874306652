"""Host-side cost of an eager forward without a GPU: the Python and dispatcher work of the fused path, with
every Triton launch and every GEMM replaced by (at most) an output allocation.

Eager merged Vim-Ti is bound by host time on an H200 (RESULTS.md, fifth and sixth sessions): its forward's host
work, not its kernels, sets its speed. On a GPU host that work is the model's Python, PyTorch's dispatcher,
the caching allocator and the CUDA launch calls. Here the model runs on small CPU tensors (a 32 or 64 px image:
the same blocks, ops and launchers as at 224 px) with the fused ops forced on, ``_launch.launch`` a no-op and
``F.linear`` an allocation of its output, so what is timed is the Python of our blocks, ops and launchers
(argument checks, views, output allocation; the launch key is skipped) and the dispatch of the PyTorch ops they
call, without arithmetic. It is a proxy: absolute times differ from a GPU host's (no driver calls, another
CPU), but where the host time goes, and what a merging layer adds to a plain one, shows here, and Python cut
here is cut there too.

    TRITON_INTERPRET=1 PYTHONPATH=src python benchmarks/host_proxy_cpu.py [--model vim_tiny_patch16_224]
        [--img-size 64] [-r 2] [--repeats 30] [--profile 25]

Prints the host time of a whole forward, merged and unmerged, and per block (plain vs merging), with the Python
calls each makes, then with ``--profile N`` the N functions with the most own time in five merged forwards
(cProfile). ``PYTHONPATH=src python benchmarks/host_proxy_cpu.py --launch`` times instead what the no-op
launches leave out: the Python of one cached launch (``_launch.launch``'s fast path) and of its key.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import time


def _force_fused_noop_launch():
    """Fused paths on for any tensor, launches no-ops (counted). Needs TRITON_INTERPRET=1 set before import: the
    conv op accepts non-CUDA tensors only under the interpreter."""
    from rmeeto.ops import policy
    from rmeeto.ops.triton import conv as tc, embed as te, merge as tm, norm as tn, proj as tp, scan as ts
    from rmeeto.ops.triton import scan_bwd as sb

    calls = [0]

    def noop_launch(kernel, grid, device, *args, **meta):
        calls[0] += 1

    from rmeeto.ops.triton import _launch

    for module in (tc, te, tm, tn, tp, ts, sb, _launch):  # _launch: the prepared blocks' Launcher calls it
        module.launch = noop_launch
        if hasattr(module, "is_available"):
            module.is_available = lambda: True
    fused = dict(policy._fused)  # the RMEETO_FUSED_* switches as read at import
    policy.use_fused = lambda op, x, backend="auto": backend != "torch" and fused.get(op, True)
    # GEMMs: an output allocation, no arithmetic (on a GPU host a cuBLAS call is host work of that order)
    import torch.nn.functional as F

    F.linear = lambda x, weight, bias=None: x.new_empty(*x.shape[:-1], weight.shape[0])
    from rmeeto.ops import selective_scan

    selective_scan.set_default_backend("triton")
    selective_scan._loaded.clear()
    return calls


def _times_us(fn, repeats: int) -> tuple[float, float]:
    """(min, median) microseconds of ``fn()``: the minimum is the least disturbed by other load on the CPU."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e6 * min(times), 1e6 * statistics.median(times)


def _calls(fn) -> int:
    """Python-level function calls (Python and builtin) made by one ``fn()``: a count that no load disturbs."""
    n = [0]

    def count(frame, event, arg):
        if event in ("call", "c_call"):
            n[0] += 1

    sys.setprofile(count)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return n[0]


def launch_cost(repeats: int = 20000) -> None:
    """Python time of one cached launch (``_launch.launch``'s fast path) with the arguments of the Vim-Ti
    bidirectional scan forward, the driver call replaced by a no-op (a fake runtime: no GPU needed), and of its
    specialization key alone. Run without TRITON_INTERPRET (the fast path is off under the interpreter)."""
    import types

    import torch
    from triton.runtime.jit import JITFunction

    from rmeeto.ops import policy
    from rmeeto.ops.triton import _launch, scan as ts

    runtime = types.SimpleNamespace(
        knobs=types.SimpleNamespace(runtime=types.SimpleNamespace(launch_enter_hook=None, launch_exit_hook=None)),
        jit_function=JITFunction, get_device=lambda: 0, get_stream=lambda index: 1234)
    _launch._get_runtime = lambda: runtime
    policy.set_fast_launch(True)
    seen = {}
    ts.launch = lambda kernel, grid, device, *args, **meta: seen.update(kernel=kernel, grid=grid, args=args, meta=meta)
    ts._require_runnable = lambda u: None
    B, D, L, N = 128, 384, 197, 16
    act = torch.zeros(B, L, D).transpose(1, 2)
    bc = torch.zeros(B, L, N).transpose(1, 2)
    vec, a_log = torch.zeros(D), torch.zeros(D, N)
    ts._fwd_bidir(act, act, act, act, a_log, a_log, bc, bc, bc, bc, vec, vec, act, vec, vec, True, 0.5, True)
    kernel, grid, args, meta = seen["kernel"], seen["grid"], seen["args"], seen["meta"]
    state = _launch._kernel_state(runtime, kernel)
    key_function = state.key_function(len(args))
    state.launchers[key_function(0, meta, *args)] = (lambda *a: None, "function", "packed",
                                                     state.tail(len(args), meta), "compiled")
    cuda = torch.device("cuda", 0)  # compared and passed along only

    def best_us(fn):
        for _ in range(1000):
            fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        times.sort()
        return 1e6 * times[0], 1e6 * times[len(times) // 2]

    whole = best_us(lambda: _launch.launch(kernel, grid, cuda, *args, **meta))
    key = best_us(lambda: key_function(0, meta, *args))
    print(f"cached launch of the bidirectional scan forward ({len(args)} arguments, {len(meta)} keywords): "
          f"{whole[0]:.2f} us min / {whole[1]:.2f} us median of Python; its key {key[0]:.2f} / {key[1]:.2f} us")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vim_tiny_patch16_224")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--img-size", type=int, default=64, help="small, so the GEMMs PyTorch runs on CPU cost little")
    ap.add_argument("-r", type=int, default=2, help="tokens merged at every second layer")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--profile", type=int, default=0, help="print the N functions with the most own time")
    ap.add_argument("--half", action="store_true", help="fp16 model and image (as the GPU benchmarks; the "
                    "x_proj + dt_proj kernel takes only 16-bit tensors)")
    ap.add_argument("--launch", action="store_true", help="only time one cached launch's Python (no interpreter)")
    a = ap.parse_args(argv)
    if a.launch:
        launch_cost()
        return 0
    if os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("set TRITON_INTERPRET=1 (the fused conv accepts non-CUDA tensors only under the interpreter)")
    import torch

    from rmeeto import MergeConfig, apply_merge, create_model

    calls = _force_fused_noop_launch()
    torch.set_grad_enabled(False)
    torch.set_num_threads(1)
    models = {}
    for merged in (False, True):
        model = create_model(a.model, img_size=a.img_size).eval()
        if merged:
            apply_merge(model, MergeConfig(num_merged=a.r, interval=2))
        models[merged] = model.half() if a.half else model
    x = torch.randn(a.batch, 3, a.img_size, a.img_size)
    x = x.half() if a.half else x

    print(f"{a.model} at {a.img_size}px ({models[False].num_tokens} tokens), batch {a.batch}, r={a.r} every 2nd "
          f"layer, CPU tensors, Triton launches as no-ops (host work only), torch {torch.__version__}")
    print("host time: min / median of the repeats; calls: Python-level calls (a count no load disturbs)")
    for merged, model in models.items():
        model(x)  # first call: workspaces, key functions
        calls[0] = 0
        model(x)
        launches = calls[0]
        best, median = _times_us(lambda: model(x), a.repeats)
        print(f"  {'merged' if merged else 'unmerged':<8} forward {best / 1e3:6.2f} / {median / 1e3:6.2f} ms, "
              f"{_calls(lambda: model(x))} calls, {launches} Triton launches")
    if hasattr(models[True], "layers"):
        _per_block(models, x, a.repeats)
    if a.profile:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(5):
            models[True](x)
        prof.disable()
        print("\nmost own time, 5 merged forwards (cProfile; its overhead inflates every call alike):")
        pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(a.profile)
    return 0


def _per_block(models, x, repeats):
    """Host time (min over the repeats, median over the blocks of a kind) and calls of each kind of block, each
    block run on the inputs it sees in the forward."""
    for merged, model in models.items():
        inputs = []
        hooks = [layer.register_forward_pre_hook(lambda mod, args: inputs.append(args)) for layer in model.layers]
        model(x)
        for h in hooks:
            h.remove()
        kinds = {"plain": [], "merging": []}
        for layer, args in zip(model.layers, inputs):
            is_merging = type(layer).__name__ == "MergingBlock" and layer.merge.num_merged > 0
            best, _ = _times_us(lambda: layer(*args), repeats)
            kinds["merging" if is_merging else "plain"].append((best, _calls(lambda: layer(*args))))
        parts = [f"{kind} {statistics.median(t for t, _ in rows):6.1f} us {statistics.median(c for _, c in rows):5.0f} "
                 f"calls x {len(rows)}" for kind, rows in kinds.items() if rows]
        print(f"  {'merged' if merged else 'unmerged':<8} per block: " + ", ".join(parts))


if __name__ == "__main__":
    sys.exit(main())

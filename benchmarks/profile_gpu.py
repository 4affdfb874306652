"""Where a Vim's time goes, eager vs graphed (vs compiled): wall time, GPU kernel time, launches, host time,
top kernels -- the "profile before and after" of issue 14.

    PYTHONPATH=src python benchmarks/profile_gpu.py [--model vim_small_patch16_224] [--batch 128]
        [--what inference,train] [--variants unmerged,merged] [--modes eager,cudagraph[,compile]]
        [--rows 18] [--ops] [--merge-layers]

For each (what, variant, mode), unmerged and merged (paper config):

``inference``: the fp16 forward (official protocol) called as ``rmeeto.fast.accelerate(model, mode)`` does.
``train``: one re-training step (student fwd + bwd under bf16 autocast, teacher fwd, AdamW) in that mode, as
``rmeeto bench --train --modes ...`` times it.

It prints one summary line per case (starting "# MODEL", for grep):
* wall ms per call (CUDA events, median of 20 warm calls) and images/s;
* GPU kernel ms of one call (sum of kernel, copy and fill time, torch.profiler) and the share of the wall
  time the GPU was busy (the rest is launch gaps and host work the GPU waited for);
* launches of one call: GPU work items (kernels, copies, fills; a CUDA graph's nodes included) and the host's
  launch calls (a graph replay is one);
* inference only: the first call's seconds (compilation, capture); for eager and cudagraph the host ms per
  forward at batch 1 (the GPU then idles, so this is the Python + launch cost of one forward); for
  ``compile`` the graphs / graph breaks ``torch._dynamo.explain`` finds;
followed by the top kernels by GPU time. ``--ops`` first prints the host microseconds per call of each op a
Vim-S block runs, at batch 1 (each row is skipped with its reason when an op's entry point is not there).
``--merge-layers`` first prints, per merging layer of ``--model`` (batch 1), the host microseconds of the merging
block, of the same block without its merge, and of the fused merge alone (workspace kept, and made per call).
Merging layers alone, no profile after: ``--merge-layers --what none``.
"""

import argparse
import statistics
import time
import warnings

import torch
from torch.profiler import ProfilerActivity, profile

import rmeeto
from rmeeto.bench import Launches, describe_failure, make_train_step
from rmeeto.fast import accelerate


def cuda_ms(fn, arg, reps: int = 20, warm: int = 3) -> float:
    """Median milliseconds per call, CUDA events around each call."""
    for _ in range(warm):
        fn(arg)
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(arg)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def host_us(fn, reps: int = 200, warm: int = 20) -> float:
    """Host microseconds per call of ``fn()`` (issue time: no synchronisation inside the timed loop)."""
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / reps * 1e6


def profiled(fn, arg):
    """(GPU ms, Launches, key averages) of one warm call."""
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn(arg)
        torch.cuda.synchronize()
    events = prof.key_averages()
    launches = Launches.from_events(events)
    gpu_ms = sum(e.self_device_time_total for e in events if e.key != "Activity Buffer Request") / 1e3
    return gpu_ms, launches, events


def _input_shape(name: str) -> tuple:
    return tuple(rmeeto.create_model(name).pretrained_cfg.input_size) if "_f8" in name else (3, 224, 224)


def inference_case(name: str, merged: bool, batch: int, mode: str):
    """(callable, input, extra summary text) for the fp16 forward in ``mode``."""
    model = rmeeto.create_model(name).cuda().half().eval()
    if merged:
        rmeeto.apply_merge(model, rmeeto.MergeConfig.paper(name))
    x = torch.randn(batch, *_input_shape(name), device="cuda", dtype=torch.half)
    extra = ""
    if "compile" in mode:
        torch._dynamo.reset()
        try:
            with torch.no_grad():
                ex = torch._dynamo.explain(model)(x)
            extra = f", dynamo graphs {ex.graph_count} breaks {ex.graph_break_count}"
            for reason in ex.break_reasons[:4]:
                extra += f"\n#     break: {(str(reason.reason).strip().splitlines() or [''])[0][:160]}"
        except Exception as exc:  # the timing below still says whether compile works
            extra = f", dynamo explain {describe_failure(exc)}"
        torch._dynamo.reset()
    fn = accelerate(model, mode)
    t0 = time.perf_counter()
    fn(x)
    torch.cuda.synchronize()
    first_s = time.perf_counter() - t0
    if "compile" not in mode:  # (a compiled forward would recompile for batch 1)
        # batch 1: the GPU finishes each kernel before the host issues the next, so this is the host's cost
        x1 = x[:1].clone()
        extra = f", host per forward at batch 1 {host_us(lambda: fn(x1), reps=20, warm=3) / 1e3:.3f} ms" + extra
    return fn, x, f", first call {first_s:.1f} s" + extra


def train_case(name: str, merged: bool, batch: int, mode: str):
    step, batches = make_train_step(name, rmeeto.MergeConfig.paper(name) if merged else None, batch_size=batch,
                                    mode=mode)
    return step, batches[0], ""


def op_rows() -> None:
    """Host microseconds per call of each op of a Vim-S block at batch 1. Built from the ops' current entry
    points; a row whose entry point is gone (the ops are being reworked) is skipped with its reason."""
    m = rmeeto.create_model("vim_small_patch16_224").cuda().half().eval()
    block, mix = m.layers[0], m.layers[0].mixer
    h = torch.randn(1, 197, 384, device="cuda", dtype=torch.half)
    res = torch.randn(1, 197, 384, device="cuda", dtype=torch.float32)
    x, z = mix.in_proj(h).chunk(2, dim=-1)

    def conv():
        from rmeeto.ops.conv import conv_silu

        return lambda: conv_silu(x, mix.conv1d.weight, mix.conv1d.bias)

    def scan():
        from rmeeto.ops.conv import conv_silu
        from rmeeto.ops.selective_scan import selective_scan

        u = conv_silu(x, mix.conv1d.weight, mix.conv1d.bias)
        dt_low, Bm, Cm = mix.x_proj(u).split([mix.dt_rank, 16, 16], dim=-1)
        delta = torch.nn.functional.linear(dt_low, mix.dt_proj.weight)
        args = (u.transpose(1, 2), delta.transpose(1, 2), mix.A_log, Bm.transpose(1, 2), Cm.transpose(1, 2), mix.D,
                z.transpose(1, 2))
        return lambda: selective_scan(*args, delta_bias=mix.dt_proj.bias, delta_softplus=True, a_is_log=True)

    def norm():
        from rmeeto.ops.norm import drop_add_rms_norm

        return lambda: drop_add_rms_norm(h, res, block.norm.weight, 1e-5, 0.0, True)

    def merge():
        from rmeeto.ops.triton.merge import match_merge_fused

        return lambda: match_merge_fused(h, res, None, h, 98, 11, 92, True)

    def block_forward():
        from rmeeto.models.vim import TokenState

        return lambda: block(h, res, TokenState(98))

    rows = {
        "selective_scan (dispatch + custom op)": scan,
        "conv_silu": conv,
        "drop_add_rms_norm": norm,
        "match_merge_fused r=11": merge,
        "F.linear in_proj": lambda: lambda: mix.in_proj(h),
        "torch.add": lambda: lambda: torch.add(h, h),
        "mixer forward": lambda: lambda: mix(h),
        "block forward": block_forward,
    }
    with torch.no_grad():
        for label, build in rows.items():
            try:
                print(f"host us per call, {label}: {host_us(build()):.1f}", flush=True)
            except Exception as exc:  # the ops changed under this script: say so rather than stop the profile
                reason = describe_failure(exc).removeprefix("failed: ")
                print(f"host us per call, {label}: skipped ({reason})", flush=True)


def merge_layer_rows(name: str) -> None:
    """Host microseconds per call of each merging layer of ``name`` (paper config, eager fp16, batch 1 so the
    GPU idles): the merging block's forward on the inputs it gets in the model, the same block run as a plain
    one (no merge) on them, the difference (the merge's host cost inside the model), and the fused merge
    alone, with its plan workspace kept (inference, the default) and made per call."""
    from rmeeto.merge import MergingBlock, plan_cls_index
    from rmeeto.models.vim import Block
    from rmeeto.ops.triton import merge as tm

    model = rmeeto.create_model(name).cuda().half().eval()
    rmeeto.apply_merge(model, rmeeto.MergeConfig.paper(name))
    x = torch.randn(1, *_input_shape(name), device="cuda", dtype=torch.half)
    seen = {}

    def keep(i):
        def hook(module, args):
            seen[i] = args
        return hook

    handles = [layer.register_forward_pre_hook(keep(i)) for i, layer in enumerate(model.layers)
               if isinstance(layer, MergingBlock)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    # a host sync anywhere in the forward would serialise host and GPU in eager mode: count them
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            model(x)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    # the mode's own notice on being switched on ("... is a prototype feature ...") is not a sync
    syncs = [str(w.message).splitlines()[0][:120] for w in caught
             if "synchroniz" in str(w.message) and "prototype feature" not in str(w.message)]
    print(f"host syncs in one merged eager forward of {name}: {len(syncs)}"
          + "".join(f"\n#     {m}" for m in syncs[:4]), flush=True)
    totals = [0.0, 0.0, 0.0, 0.0]
    with torch.no_grad():
        for i, (hidden, residual, state) in seen.items():
            layer, cfg = model.layers[i], model.layers[i].merge
            L = hidden.shape[1]
            r = max(0, min(cfg.num_merged, (L - 1) // 2))
            new_cls = plan_cls_index(state.cls_index, L, r, cfg.ordered)
            metric = hidden if cfg.metric == "x" else state.metric
            merged = host_us(lambda: layer(hidden, residual, state))
            plain = host_us(lambda: Block.forward(layer, hidden, residual, state))

            def fused():
                return tm.match_merge_fused(hidden, residual, state.size, metric, state.cls_index, r, new_cls,
                                            cfg.ordered)

            alone = host_us(fused)
            kept = tm._reused_workspace
            tm._reused_workspace = lambda *args: None  # a new workspace per call, as before issue 14's rework
            try:
                fresh = host_us(fused)
            finally:
                tm._reused_workspace = kept
            for k, v in enumerate((merged, plain, alone, fresh)):
                totals[k] += v
            print(f"host us, merging layer {i} ({L} tokens, r={r}): block {merged:.1f}, as a plain block "
                  f"{plain:.1f}, merge's share {merged - plain:.1f}; match_merge_fused {alone:.1f} "
                  f"(workspace per call {fresh:.1f})", flush=True)
    m, p_, a, f = totals
    print(f"host us, all {len(seen)} merging layers of {name}: blocks {m:.0f}, as plain blocks {p_:.0f}, "
          f"merges' share {m - p_:.0f}; match_merge_fused {a:.0f} (workspace per call {f:.0f})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="vim_small_patch16_224")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--what", default="inference,train", help="inference, train or both")
    ap.add_argument("--variants", default="unmerged,merged")
    ap.add_argument("--modes", default="eager,cudagraph", help="eager, cudagraph, compile (comma-separated)")
    ap.add_argument("--rows", type=int, default=18, help="top kernels per case (0: none)")
    ap.add_argument("--ops", action="store_true", help="first, host time per call of each op of a block")
    ap.add_argument("--merge-layers", action="store_true",
                    help="first, host time of each merging layer of --model (batch 1), with the merge's share")
    args = ap.parse_args()
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    if args.ops:
        op_rows()
    if args.merge_layers:
        merge_layer_rows(args.model)
    for what in args.what.split(","):
        if what == "none":
            continue
        make = {"inference": inference_case, "train": train_case}[what]
        for variant in args.variants.split(","):
            for mode in args.modes.split(","):
                label = f"{args.model} {variant} {what} {mode}, batch {args.batch}"
                try:
                    fn, arg, extra = make(args.model, variant == "merged", args.batch, mode)
                    wall = cuda_ms(fn, arg)
                    gpu_ms, launches, events = profiled(fn, arg)
                except Exception as exc:  # a mode that fails (compile in Inductor) must not cost the others
                    print(f"\n# {label}: {describe_failure(exc, limit=240)}", flush=True)
                    torch._dynamo.reset()
                    continue
                print(f"\n# {label}: wall {wall:.2f} ms ({args.batch / wall * 1e3:,.0f} img/s), GPU kernels "
                      f"{gpu_ms:.2f} ms ({100 * gpu_ms / wall:.0f}% busy), launches {launches.gpu} "
                      f"(host calls {launches.host}){extra}", flush=True)
                if args.rows:
                    print(events.table(sort_by="self_device_time_total", row_limit=args.rows,
                                       max_name_column_width=70))
                del fn, arg, events
                torch._dynamo.reset()
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

"""Where eager time goes beyond kernel time: launches per forward, host time per op, graph breaks.

    PYTHONPATH=src python3 benchmarks/probe_eager.py [--models vim_small_patch16_224] [--compile]

For each model, unmerged and merged (paper config), fp16, batch 128 (CUDA only):
* eager ms per forward (CUDA events, median of 20), graphed ms (CUDA graph replay), and with --compile the
  ``torch.compile`` ms, plus the number of graphs / graph breaks ``torch._dynamo.explain`` reports;
* GPU kernel time and kernel launches of one eager forward (torch.profiler);
* host time of the whole forward at batch 1 (the GPU then idles: this is the Python + launch cost);
* host time per call of each op a block runs, at batch 1 (scan custom op vs its launcher called directly,
  conv, add+norm, merge, one GEMM).
"""

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

import rmeeto
from rmeeto.fast import GraphedForward


def cuda_ms(fn, x, reps=20, warm=5):
    for _ in range(warm):
        fn(x)
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn(x)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def host_us(fn, reps=200, warm=20):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / reps * 1e6


def kernels(fn, x, top=0):
    fn(x)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn(x)
        torch.cuda.synchronize()
    ev = prof.key_averages()
    if top:
        print(ev.table(sort_by="self_device_time_total", row_limit=top, max_name_column_width=60), flush=True)
    return sum(e.self_device_time_total for e in ev) / 1e3, sum(e.count for e in ev if e.self_device_time_total > 0)


def build(name, merged):
    m = rmeeto.create_model(name).cuda().half().eval()
    if merged:
        rmeeto.apply_merge(m, rmeeto.MergeConfig.paper(name))
    return m


@torch.no_grad()
def model_rows(name, do_compile, batch, top=0):
    shape = (3, 8, 224, 224) if "_f8" in name else (3, 224, 224)
    x = torch.randn(batch, *shape, device="cuda", dtype=torch.half)
    x1 = x[:1].clone()
    for merged in (False, True):
        m = build(name, merged)
        eager = cuda_ms(m, x)
        gpu_ms, launches = kernels(m, x, top)
        host1 = host_us(lambda: m(x1), reps=20, warm=3) / 1e3
        graphed = cuda_ms(GraphedForward(m), x)
        line = (f"{name} {'merged' if merged else 'unmerged'} b{batch}: eager {eager:.2f} ms ({batch / eager * 1e3:,.0f} "
                f"img/s), graphed {graphed:.2f} ms ({batch / graphed * 1e3:,.0f}), kernels {gpu_ms:.2f} ms in "
                f"{launches} launches, host per forward at batch 1 {host1:.2f} ms")
        if do_compile:
            try:
                torch._dynamo.reset()
                ex = torch._dynamo.explain(m)(x)
                t0 = time.perf_counter()
                cm = torch.compile(m)
                cm(x)
                ct = time.perf_counter() - t0
                comp = cuda_ms(cm, x)
                line += (f"; compile {comp:.2f} ms ({batch / comp * 1e3:,.0f}), first call {ct:.0f} s, "
                         f"graphs {ex.graph_count}, breaks {ex.graph_break_count}")
                for r in ex.break_reasons[:6]:
                    line += f"\n    break: {str(r.reason)[:200]}"
            except Exception as e:  # report and go on
                line += f"; compile FAILED: {type(e).__name__}: {str(e)[:300]}"
        print(line, flush=True)
        del m
        torch.cuda.empty_cache()


@torch.no_grad()
def op_rows():
    from rmeeto.ops.conv import conv_silu, conv_silu_bidir
    from rmeeto.ops.norm import drop_add_rms_norm
    from rmeeto.ops.selective_scan import selective_scan, selective_scan_bidir
    from rmeeto.ops.triton import merge as tm
    from rmeeto.ops.triton import scan as ts

    m = rmeeto.create_model("vim_small_patch16_224").cuda().half().eval()
    mix = m.layers[0].mixer
    L, E, di = 197, 384, 768
    h = torch.randn(1, L, E, device="cuda", dtype=torch.half)
    xz = mix.in_proj(h)
    x, z = xz.chunk(2, dim=-1)
    u = conv_silu(x, mix.conv1d.weight, mix.conv1d.bias)
    dbl = mix.x_proj(u)
    dt_low, Bm, Cm = dbl.split([mix.dt_rank, 16, 16], dim=-1)
    delta = torch.nn.functional.linear(dt_low, mix.dt_proj.weight)
    args = (u.transpose(1, 2), delta.transpose(1, 2), mix.A_log, Bm.transpose(1, 2), Cm.transpose(1, 2), mix.D,
            z.transpose(1, 2))
    kw = dict(delta_bias=mix.dt_proj.bias, delta_softplus=True, a_is_log=True)
    res = torch.randn(1, L, E, device="cuda", dtype=torch.float32)
    rows = {
        "selective_scan (dispatch + custom op)": lambda: selective_scan(*args, **kw),
        "custom op directly": lambda: ts._selective_scan_op(*args, mix.dt_proj.bias, True, False, True),
        "launcher _fwd directly": lambda: ts._fwd(*args, mix.dt_proj.bias, True, False, True),
        "conv_silu": lambda: conv_silu(x, mix.conv1d.weight, mix.conv1d.bias),
        "drop_add_rms_norm": lambda: drop_add_rms_norm(h, res, m.layers[0].norm.weight, 1e-5, 0.0, True),
        "match_merge_fused r=11": lambda: tm.match_merge_fused(h, res, None, h, 98, 11, 92, True),
        "F.linear in_proj": lambda: mix.in_proj(h),
        "torch.add": lambda: torch.add(h, h),
        # both directions at once (issue 14): compare with 2 x conv_silu and 2 x selective_scan above
        "conv_silu_bidir": lambda: conv_silu_bidir(x, mix.conv1d.weight, mix.conv1d.bias, mix.conv1d_b.weight,
                                                   mix.conv1d_b.bias),
        "selective_scan_bidir (dispatch + custom op)": lambda: selective_scan_bidir(
            *[(t, t) for t in args[:6]], z=args[6], delta_bias=(mix.dt_proj.bias, mix.dt_proj.bias),
            delta_softplus=True, scale=0.5, a_is_log=True),
        "mixer forward": lambda: mix(h),
        "block forward": lambda: m.layers[0](h, res, rmeeto.models.vim.TokenState(98)),
    }
    for k, fn in rows.items():
        print(f"host us per call, {k}: {host_us(fn):.1f}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="vim_small_patch16_224")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--no-ops", action="store_true")
    ap.add_argument("--top", type=int, default=0, help="print the top kernels of each variant")
    a = ap.parse_args()
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    if not a.no_ops:
        op_rows()
    for name in a.models.split(","):
        model_rows(name, a.compile and "_f8" not in name, a.batch if "_f8" not in name else 16, a.top)


if __name__ == "__main__":
    main()

"""CPU forward throughput of Vim-Ti at 224px for each pure-PyTorch scan backend.

    python benchmarks/bench_cpu_forward.py [--model vim_tiny_patch16_224] [--batch 8] [--repeats 3]

Prints images/s per backend (median of ``repeats`` timed batches after one warm-up), float32, no_grad, eval.
"""

import argparse
import platform
import statistics
import time

import torch

import rmeeto


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vim_tiny_patch16_224")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backends", default="reference,chunked")
    args = ap.parse_args()

    torch.manual_seed(0)
    model = rmeeto.create_model(args.model).eval()
    x = torch.randn(args.batch, *model.pretrained_cfg.input_size)
    print(f"# {args.model}, batch {args.batch}, float32, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}")
    print(f"{'backend':<12} {'images/s':>10} {'s/batch':>10}")
    outputs = {}
    for backend in args.backends.split(","):
        model.set_scan_backend(backend)
        with torch.no_grad():
            outputs[backend] = model(x)  # warm-up
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - t0)
        t = statistics.median(times)
        print(f"{backend:<12} {args.batch / t:>10.2f} {t:>10.3f}")
    ref = outputs.get("reference")
    for name, out in outputs.items():
        if ref is not None and name != "reference":
            print(f"# max |logits({name}) - logits(reference)| = {(out - ref).abs().max().item():.2e}")


if __name__ == "__main__":
    main()

"""How fast is this host's CPU at what an eager forward's host work is made of? Pure Python (a loop of adds and a
loop of attribute lookups and calls) and PyTorch's dispatch on CPU tensors (torch.empty, a view, a narrow), us per
operation, best of 5. Run on two machines, the ratios say how much slower one host's Python is than the other's.

    python3 benchmarks/host_speed.py
"""

import platform
import time

import torch


def best(fn, n, reps=5):
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(n)
        out.append((time.perf_counter() - t0) / n * 1e6)
    return min(out)


def adds(n):
    s = 0
    for i in range(n):
        s += i
    return s


class _Obj:
    def __init__(self):
        self.a = 1

    def get(self, k):
        return self.a + k


def calls(n):
    o = _Obj()
    s = 0
    for i in range(n):
        s += o.get(i)
    return s


def empties(n):
    for _ in range(n):
        torch.empty(128, 8)


def views(n):
    x = torch.empty(128, 8)
    for _ in range(n):
        x.view(8, 128).narrow(0, 1, 4)


if __name__ == "__main__":
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    print(f"# {cpu}; python {platform.python_version()}, torch {torch.__version__}")
    print(f"python add: {best(adds, 2_000_000) * 1e3:.1f} ns, python method call: "
          f"{best(calls, 1_000_000) * 1e3:.1f} ns, torch.empty: {best(empties, 20_000):.2f} us, "
          f"view + narrow: {best(views, 20_000):.2f} us")

"""Programmatic dependent launch's device side for the kernels that take a ``PDL`` constexpr: with ``PDL`` (set
by :func:`rmeeto.ops.triton._launch.pdl_meta`, which also launches them with ``launch_pdl``), a kernel first waits
for the previous kernel's results (``gdc_wait``), then lets the next kernel launch (``gdc_launch_dependents``): the
next kernel's programs become resident while this one drains, instead of after it. Without ``PDL`` neither is
compiled in. Triton >= 3.3; absent, the names are None and ``pdl_meta`` never turns ``PDL`` on."""

try:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except Exception:  # pragma: no cover - depends on the install
    gdc_wait = gdc_launch_dependents = None

__all__ = ["gdc_wait", "gdc_launch_dependents"]

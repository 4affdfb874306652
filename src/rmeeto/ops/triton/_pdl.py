"""Programmatic dependent launch's device side: :func:`follow_previous`, the first call of every kernel that takes a
``PDL`` constexpr. With ``PDL`` (set by :func:`rmeeto.ops.triton._launch.pdl_meta`, which also launches the kernel
with ``launch_pdl``), the kernel first waits for the previous kernel's results (``gdc_wait``), then lets the next
kernel launch (``gdc_launch_dependents``): the next kernel's programs become resident while this one drains,
instead of after it. Without ``PDL`` nothing is compiled in. Triton >= 3.3; where its ``gdc_*`` are absent,
``pdl_meta`` never turns ``PDL`` on."""

try:
    import triton
    import triton.language as tl

    try:
        from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
    except Exception:  # pragma: no cover - depends on the install
        gdc_wait = gdc_launch_dependents = None

    @triton.jit
    def follow_previous(PDL: tl.constexpr):
        """Under PDL: the previous kernel's results first, then the next kernel may launch."""
        if PDL:
            gdc_wait()
            gdc_launch_dependents()
except Exception:  # pragma: no cover - depends on the install
    gdc_wait = gdc_launch_dependents = follow_previous = None

__all__ = ["follow_previous", "gdc_wait", "gdc_launch_dependents"]

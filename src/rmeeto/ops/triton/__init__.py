"""Triton kernels and their autograd functions / launchers. Each module imports without Triton (its
``is_available()`` is then False) and never imports the dispatchers in :mod:`rmeeto.ops`, which import it."""

# the reduce-scatter scan backward registers itself with scan.py's dispatch (see scan._XLANE_BWD)
from rmeeto.ops.triton import scan_bwd as _scan_bwd  # noqa: E402,F401

"""Triton kernels and their autograd functions / launchers. Each module imports without Triton (its
``is_available()`` is then False) and never imports the dispatchers in :mod:`rmeeto.ops`, which import it."""

# the scan backward registers its launchers with scan.py's dispatch (see scan._BWD) when imported
from rmeeto.ops.triton import scan_bwd as _scan_bwd  # noqa: E402,F401

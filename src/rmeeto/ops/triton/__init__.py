"""Triton kernels and their autograd functions / launchers. Each module imports without Triton (its
``is_available()`` is then False) and never imports the dispatchers in :mod:`rmeeto.ops`, which import it."""

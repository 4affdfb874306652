"""Suite-wide options.

Two tiers. The default run (``make test``) keeps every behaviour covered and takes about ten minutes on two
cores. Tests marked ``full`` add configurations or frozen-copy comparisons on top of what a default test already
checks (the pre-unification scan and conv kernels compared bit for bit, the longest interpreter sweeps): they
run with ``--full`` or ``RMEETO_FULL_TESTS=1``, as CI does, and are skipped otherwise, saying how to run them.

Under pytest-xdist (``-n 2``) each worker keeps torch on one intra-op thread, and the subprocesses the tests
start inherit OMP_NUM_THREADS=1: two workers then use the two cores without oversubscribing them.
"""

from __future__ import annotations

import os

import pytest

FULL_ENV = "RMEETO_FULL_TESTS"


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true", default=False,
                     help=f"also run the tests marked 'full' (same as {FULL_ENV}=1)")


def full_run(config) -> bool:
    return bool(config.getoption("--full")) or os.environ.get(FULL_ENV, "") not in ("", "0")


def pytest_configure(config):
    config.addinivalue_line("markers", "full: extra configurations and frozen-copy checks; run with --full")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if full_run(config):
        return
    skip = pytest.mark.skip(reason=f"in the full tier: run with --full or {FULL_ENV}=1")
    for item in items:
        if "full" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def full(request) -> bool:
    """True when the full tier runs: a default test may widen its own sweep with it."""
    return full_run(request.config)

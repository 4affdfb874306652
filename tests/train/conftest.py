"""Fixtures shared by the training tests (their plain helpers are in _train_common.py)."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """torch on one intra-op thread while the test runs: in-process training steps stay reproducible and do not
    compete with the subprocesses a test starts."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

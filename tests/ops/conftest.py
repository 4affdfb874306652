"""Fixtures shared by the op tests. Nothing here imports Triton or needs CUDA when the file is loaded: the GPU
test files must still be collected, and skip, on a machine without either."""

import pytest
import torch

from rmeeto import MergeConfig, apply_merge, create_model


@pytest.fixture
def tiny_vim():
    """A factory: ``tiny_vim(merged, device="cpu")`` -> ``vim_test_patch4_16`` (17 tokens, depth 4) with the
    weights of seed 0 on ``device``, merging two tokens per layer when ``merged``."""

    def build(merged: bool, device="cpu"):
        torch.manual_seed(0)
        model = create_model("vim_test_patch4_16").to(device)
        if merged:
            apply_merge(model, MergeConfig(num_merged=2))
        return model

    return build


@pytest.fixture
def poison_scan_buffers():
    """Every buffer the Triton scan allocates is filled with NaN first (``triton_scan._POISON``) while the test
    runs, so an element a kernel forgets to write fails the comparison."""
    from rmeeto.ops.triton import scan as triton_scan  # imported here: only tests that run (have Triton) use it

    old = triton_scan._POISON
    triton_scan._POISON = True
    yield
    triton_scan._POISON = old

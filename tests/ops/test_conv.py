"""The bidirectional conv's CPU path is the two single-direction convs; malformed weights are named."""

import pytest
import torch

from rmeeto.ops.conv import conv_silu, conv_silu_bidir


def test_conv_silu_bidir_is_both_directions():
    torch.manual_seed(0)
    x = torch.randn(2, 9, 24)[..., :12]  # a strided view, as in_proj's half
    wf, wb = torch.randn(12, 1, 4), torch.randn(12, 1, 4)
    bf, bb = torch.randn(12), torch.randn(12)
    u_f, u_b = conv_silu_bidir(x, wf, bf, wb, bb)
    assert torch.equal(u_f, conv_silu(x, wf, bf)) and torch.equal(u_b, conv_silu(x, wb, bb, reverse=True))
    assert not torch.allclose(u_f, conv_silu(x, wb, bb, reverse=True))  # the directions really differ
    with pytest.raises(ValueError, match="weights differ in shape"):
        conv_silu_bidir(x, wf, bf, wb[..., :3], bb)

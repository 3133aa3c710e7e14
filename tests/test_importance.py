import numpy as np
import pytest
import torch
from torch import nn

from actzip.lossy.importance import WEIGHT_FLOOR, channel_weights
from actzip.sites import find_sites


def _net(frozen: bool):
    """The second conv reads its 4 input channels with weights 1, 2, 0, 1: the output's squared
    change per unit of squared error in each channel is 1, 4, 0, 1."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 1, 1, bias=False))
    with torch.no_grad():
        net[2].weight.copy_(torch.tensor([1.0, 2.0, 0.0, 1.0]).reshape(1, 4, 1, 1))
    for p in net.parameters():
        p.requires_grad_(not frozen)
    return net.eval()


@pytest.mark.parametrize("frozen", [False, True])
def test_weights_follow_the_squared_jacobian_of_each_channel(frozen):
    net = _net(frozen)
    batches = [torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    sites = find_sites(net, batches[0])
    with torch.no_grad():
        w = channel_weights(net, batches, sites)[sites[0].name]
    assert w.shape == (4,) and w.mean() == pytest.approx(1.0)
    assert w[1] / w[0] == pytest.approx(4.0, rel=0.15) and w[3] / w[0] == pytest.approx(1.0, rel=0.15)
    assert 0.9 * WEIGHT_FLOOR < w[2] <= WEIGHT_FLOOR  # floored: the output does not read that channel
    assert not net[2]._forward_pre_hooks and all(p.grad is None for p in net.parameters())

import pytest
import torch
from torch import nn

from actzip.macs import conv_geometry, count_macs


def brute_force_macs(conv: nn.Conv2d, x: torch.Tensor) -> tuple[int, int]:
    """A conv with all-ones weights over the indicator (x != 0) counts, per output, the non-zero inputs
    it reads; dense MACs are every tap of every output, padding included."""
    probe = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=False, padding_mode=conv.padding_mode)
    nn.init.ones_(probe.weight)
    with torch.no_grad():
        out = probe((x != 0).float())
    kh, kw = conv.kernel_size
    return out.numel() * conv.in_channels // conv.groups * kh * kw, round(out.sum().item())


CASES = [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=2, padding=0),
    dict(kernel_size=5, padding=2, dilation=2),
    dict(kernel_size=(3, 1), stride=(2, 1), padding=(1, 0)),
    dict(kernel_size=3, padding=1, groups=4),
    dict(kernel_size=3, padding=1, groups=8),  # depthwise
    dict(kernel_size=1),
    dict(kernel_size=3, padding="same"),
    dict(kernel_size=3, padding=1, padding_mode="reflect"),
    dict(kernel_size=3, padding=2, padding_mode="circular"),
    dict(kernel_size=4, stride=3, padding=1, padding_mode="replicate"),
]


@pytest.mark.parametrize("kw", CASES)
def test_conv_macs_match_brute_force(kw):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, **kw)
    x = torch.relu(torch.randn(2, 8, 11, 9))
    total, effective = brute_force_macs(conv, x)
    c = count_macs(conv, x)
    assert (c.macs, c.effective_macs) == (total, effective)


def test_hand_checked_3x3():
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    x = torch.zeros(1, 1, 3, 3)
    assert count_macs(conv, x).macs == 9 * 9
    x[0, 0, 1, 1] = 1.0  # the centre pixel is read by all 9 outputs
    assert count_macs(conv, x).effective_macs == 9
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 0, 0] = 1.0  # a corner pixel is read by the 4 outputs around it
    assert count_macs(conv, x).effective_macs == 4


def test_linear_macs():
    fc = nn.Linear(4, 3)
    x = torch.tensor([[0.0, 1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    c = count_macs(fc, x)
    assert (c.macs, c.effective_macs) == (2 * 4 * 3, 2 * 3)
    assert c.speedup == 4.0


def test_tf_same_padding_of_efficientnet_style_convs():
    class StaticSame(nn.Conv2d):
        def __init__(self):
            super().__init__(4, 4, 3, stride=2, bias=False)
            self.static_padding = nn.ZeroPad2d((0, 1, 0, 1))

        def forward(self, x):
            return super().forward(self.static_padding(x))

    conv = StaticSame()
    g = conv_geometry(conv, 8, 8)
    assert g.padding == (0, 1, 0, 1) and g.output_size(8, 8) == (4, 4)
    x = torch.relu(torch.randn(1, 4, 8, 8))
    probe = nn.Conv2d(4, 4, 3, stride=2, bias=False)
    nn.init.ones_(probe.weight)
    with torch.no_grad():
        expected = probe(conv.static_padding((x != 0).float())).sum().item()
    assert count_macs(conv, x).effective_macs == round(expected)

import numpy as np
import pytest
import torch

from actzip.quant import (QuantParams, code_dtype, code_range, dequantize, fake_quantize, params_for_range,
                          quantize)


@pytest.mark.parametrize("bits", [2, 4, 8, 12, 16])
def test_unsigned_roundtrip_error_is_half_a_step(bits):
    x = torch.rand(1000) * 6
    p = params_for_range(bits, 0.0, 6.0)
    assert not p.signed and p.qmin == 0 and p.qmax == 2**bits - 1
    err = (dequantize(quantize(x, p), p) - x).abs().max().item()
    assert err <= p.scale[0] / 2 + 1e-6


@pytest.mark.parametrize("bits", [2, 8, 16])
def test_signed_range_is_symmetric_and_zero_exact(bits):
    p = params_for_range(bits, -3.0, 1.0)
    assert p.signed and p.qmin == -p.qmax == -(2 ** (bits - 1) - 1)
    q = quantize(torch.tensor([0.0, -3.0, 3.0, -100.0, 100.0]), p)
    assert q[0] == 0 and q[1] == p.qmin and q[2] == p.qmax
    assert q[3] == p.qmin and q[4] == p.qmax  # clipped, not wrapped


def test_small_values_quantize_to_zero():
    p = params_for_range(8, 0.0, 255.0)  # scale 1
    assert quantize(torch.tensor([0.49, 0.5, 0.51, 1.5]), p).tolist() == [0, 0, 1, 2]  # half to even


def test_per_channel_scales_follow_the_axis():
    x = torch.zeros(2, 3, 4, 4)
    x[:, 1] = 10.0
    x[:, 2] = 0.1
    p = params_for_range(8, x.amin((0, 2, 3)).numpy(), x.amax((0, 2, 3)).numpy(), axis=1)
    assert len(p.scale) == 3 and p.scale[0] == 1.0  # an all-zero channel gets scale 1
    q = quantize(x, p)
    assert q[:, 1].unique().tolist() == [255] and q[:, 2].unique().tolist() == [255]
    with pytest.raises(ValueError, match="3 channel scales"):
        quantize(torch.zeros(2, 5, 1, 1), p)


@pytest.mark.parametrize("bits", [0, 1, 17, 8.0, True])
def test_bad_bit_widths_are_refused(bits):
    with pytest.raises(ValueError, match="bit width"):
        params_for_range(bits, 0, 1)


def test_code_dtype_holds_the_range():
    for bits in (2, 8, 9, 16):
        for signed in (False, True):
            lo, hi = code_range(bits, signed)
            info = np.iinfo(code_dtype(bits, signed))
            assert info.min <= lo and hi <= info.max


def test_fake_quantize_matches_quantize_and_passes_gradient_inside_range():
    p = params_for_range(4, -1.0, 1.0)
    x = torch.tensor([-2.0, -0.5, 0.0, 0.3, 0.99, 2.0], requires_grad=True)
    y = fake_quantize(x, p)
    assert torch.equal(y.detach(), dequantize(quantize(x.detach(), p), p))
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_params_serialise():
    p = params_for_range(8, np.array([0.0, 0.0]), np.array([1.0, 2.0]), axis=1)
    assert QuantParams.from_dict(p.to_dict()) == p

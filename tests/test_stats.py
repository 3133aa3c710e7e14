import numpy as np
import pytest
import torch

from actzip.errors import ActzipError

from actzip.bitcount import entropy_bits
from actzip.quant import params_for_range, quantize
from actzip.stats import RangeStats, SiteStats


@pytest.mark.parametrize("bits,per_channel", [(8, False), (16, False), (4, True), (16, True)])
@pytest.mark.parametrize("signed", [False, True])
def test_code_histogram_equals_bincount_of_quantize(bits, per_channel, signed):
    torch.manual_seed(0)
    x = torch.randn(3, 5, 7, 7) * torch.arange(1, 6).reshape(1, 5, 1, 1)
    x = x if signed else torch.relu(x)
    dims = (0, 2, 3)
    lo, hi = (x.amin(dims).numpy(), x.amax(dims).numpy()) if per_channel else (x.min().item(), x.max().item())
    p = params_for_range(bits, lo, hi, axis=1 if per_channel else None)
    other = params_for_range(5, -1.0, 1.0)  # a second quantizer measured in the same pass
    s = SiteStats({bits: p, 5: other})
    conv = torch.nn.Conv2d(5, 1, 1)
    s.update(conv, x[:2])
    s.update(conv, x[2:])
    h = s.codes[bits]
    expected = torch.bincount((quantize(x, p) - p.qmin).flatten().long(), minlength=len(h.counts)).numpy()
    assert np.array_equal(h.counts, expected)
    q5 = quantize(x, other) - other.qmin
    assert np.array_equal(s.codes[5].counts, torch.bincount(q5.flatten().long(), minlength=31).numpy())
    assert s.zeros == int((x == 0).sum()) and s.numel == x.numel()


def test_bit_counts_from_histogram():
    s = SiteStats({8: params_for_range(8, 0.0, 255.0)}, channel_axis=-1)
    s.update(torch.nn.Linear(4, 1), torch.tensor([[0.0, 0.0, 0.0, 5.0]]))
    h = s.codes[8]
    # distribution (3/4, 1/4): H = 0.811278 bits per value
    assert entropy_bits(h) == pytest.approx(4 * 0.8112781244591328)


def test_range_stats_bounds_and_percentile():
    r = RangeStats(channels=2, channel_axis=1)
    x = torch.zeros(1000, 2)
    x[:, 0] = torch.linspace(0, 1, 1000)
    x[0, 1] = -50.0  # one outlier
    r.update(x[:500])
    r.update(x[500:])
    assert r.numel == 2000 and r.zeros == 1000
    assert r.bounds("max") == (-50.0, 1.0)
    lo, hi = r.bounds("max", per_channel=True)
    assert lo.tolist() == [0.0, -50.0] and hi.tolist() == [1.0, 0.0]
    lo, hi = r.bounds("percentile", percentile=99.0)  # the outlier is beyond the 99th percentile
    assert 0.97 <= hi <= 1.04 and lo == -hi


def test_range_stats_refuse_nan():
    for bad in (float("nan"), float("inf")):
        r = RangeStats(2, 1)
        with pytest.raises(ActzipError, match="NaN"):
            r.update(torch.tensor([[1.0, bad], [0.0, 2.0]]))


def test_nan_in_measure_pass_stays_inside_the_histogram():
    s = SiteStats({8: params_for_range(8, -1.0, 1.0)}, channel_axis=-1)
    s.update(torch.nn.Linear(3, 1), torch.tensor([[float("nan"), 0.5, -2.0]]))
    assert s.codes[8].numel == 3


def test_site_stats_merge_equals_one_pass():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 4, 3, padding=1)
    x = torch.relu(torch.randn(6, 4, 5, 5))
    q = {8: params_for_range(8, 0.0, float(x.max()))}
    whole, a, b = SiteStats(q), SiteStats(q), SiteStats(q)
    whole.update(conv, x)
    a.update(conv, x[:2])
    b.update(conv, x[2:])
    a.merge(b)
    assert (a.numel, a.zeros, a.macs, whole.zero_fraction) == (whole.numel, whole.zeros, whole.macs, a.zero_fraction)
    assert np.array_equal(a.codes[8].counts, whole.codes[8].counts)

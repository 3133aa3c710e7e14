"""The pixel-domain re-quantization codec `requant`, alone and as dctcm's pixel-domain mode."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actzip import codecs
from actzip.codecs import dctcm
from actzip.codecs.layout import relative_error
from actzip.codecs.requant import DEFAULT_BUDGET
from actzip.errors import CorruptStreamError


def _maps(shape, dtype=np.uint8, seed=0) -> np.ndarray:
    """ReLU-like codes: half zeros, the rest spread over most of the dtype's range."""
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    x = rng.integers(max(info.min, -3000), min(info.max, 3000), shape)
    x[rng.random(shape) < 0.5] = 0
    return x.astype(dtype)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.sampled_from([(2, 3, 5, 7), (1, 4, 9), (3, 2)]), dtype=st.sampled_from([np.uint8, np.int16]),
       step=st.sampled_from([1.0, 2.0, 5.5, 64.0]), coder=st.sampled_from(["zvc", "rans", "ctxrans", "ctx"]),
       seed=st.integers(0, 20))
def test_error_is_at_most_half_a_step_and_decode_is_reconstruct(shape, dtype, step, coder, seed):
    x = _maps(shape, dtype, seed)
    c = codecs.get("requant", step=step, coder=coder)
    y = c.decode(c.encode(x))
    assert y.dtype == x.dtype and np.array_equal(y, c.reconstruct(x))
    assert np.abs(y.astype(np.int64) - x.ravel()).max() <= step / 2 + 0.5
    if step == 1.0:
        assert np.array_equal(y, x.ravel())


def test_each_channel_takes_its_own_step():
    x = _maps((2, 6, 8, 8))
    steps = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    c = codecs.get("requant", bits=8, channel_steps=steps)
    err = np.abs(c.decode(c.encode(x)).reshape(x.shape).astype(int) - x).max(axis=(0, 2, 3))
    assert (err <= np.array(steps) / 2 + 0.5).all() and err[0] == 0 and err[-1] > 4


def test_without_settings_it_compresses_within_the_default_budget():
    x = _maps((2, 16, 12, 12))
    c = codecs.get("requant", bits=8)
    stream = c.encode(x)
    assert len(stream) < 0.8 * x.size
    assert 0 < relative_error(x, c.decode(stream)) <= DEFAULT_BUDGET


def test_dctcm_codes_its_pixel_domain_through_requant():
    x = _maps((2, 16, 6, 6))
    d = codecs.get("dctcm", bits=8, transform=False, step=3.0)
    stream = d.encode(x)
    r = codecs.get("requant", bits=8, step=3.0)
    assert stream.endswith(r.encode(x)) and dctcm.REQUANT in stream[:20]
    assert np.array_equal(d.decode(stream), r.decode(r.encode(x)))
    assert np.array_equal(d.decode(stream), d.reconstruct(x))


@pytest.mark.parametrize("params", [{"step": 2.0}, {"channel_steps": [1.0, 2.0, 4.0, 8.0]}])
def test_every_truncation_and_forged_setting_is_refused(params):
    c = codecs.get("requant", bits=8, **params)
    stream = c.encode(_maps((2, 4, 5, 5)))
    for cut in range(len(stream)):
        with pytest.raises(CorruptStreamError):
            c.decode(stream[:cut])
    settings_at = stream.index(bytes([1, 2, int("channel_steps" in params)]))  # axis, ctxrans, per channel
    for at, value in ((0, 9), (1, 7), (2, 5), (3, 255 if "channel_steps" in params else 0x7F)):
        forged = bytearray(stream)
        forged[settings_at + at + (3 if at == 3 and "step" in params else 0)] = value
        with pytest.raises(CorruptStreamError):
            c.decode(bytes(forged))


@pytest.mark.parametrize("params, message", [({"step": 0.0}, "step"), ({"coder": "zstd"}, "coder"),
                                             ({"budget": 2.0}, "budget"), ({"channel_steps": [1.0, 3.0]}, "2\\^"),
                                             ({"channel_steps": [1.0], "budget": 0.1}, "no budget")])
def test_bad_settings_are_refused(params, message):
    with pytest.raises(ValueError, match=message):
        codecs.get("requant", **params)

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import actzip
from actzip import codecs
from actzip.codecs import klt
from actzip.codecs.layout import relative_error
from actzip.codecs.search import klt_curve
from actzip.errors import CorruptStreamError
from actzip.quant import params_for_range, quantize


def _low_rank_maps(shape, rank=3, seed=0, scale=30.0, dtype=np.uint8):
    """ReLU codes whose channels are driven by `rank` hidden ones, like a depthwise conv's input
    (a ReLU of a 1x1 conv from fewer channels)."""
    rng = np.random.default_rng(seed)
    n, c, *spatial = shape
    hidden = rng.normal(size=(n, rank, *spatial))
    x = scale * np.einsum("kc,nk...->nc...", rng.normal(size=(rank, c)), hidden) + 0.5 * rng.normal(size=shape)
    hi = np.iinfo(dtype).max
    return np.clip(np.rint(x), 0, hi).astype(dtype)


def _codec(x, step=2.0, **params):
    fitted = klt.fit(x)
    off = klt.offsets(x, 8, fitted["basis"], fitted["mean"], step)
    return codecs.get("klt", bits=8, step=step, offsets=off, **fitted, **params)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 3), c=st.integers(2, 40), h=st.integers(2, 6), step=st.sampled_from([1.0, 2.0, 4.0, 11.3]),
       seed=st.integers(0, 99), coder=st.sampled_from(["ctxrans", "rans", "ctx"]))
def test_decoded_error_is_within_the_stated_bound_and_decode_is_reconstruct(n, c, h, step, seed, coder):
    x = _low_rank_maps((n, c, h, h), seed=seed)
    codec = _codec(x, step, coder=coder)
    y = codec.decode(codec.encode(x))
    assert y.dtype == x.dtype and np.array_equal(y, codec.reconstruct(x))
    # step/2 per coefficient (an orthonormal basis keeps it; float16 storage adds ~1e-3 of the
    # map), the offsets, and the final rounding
    pixels = x.size // c
    bound = (math.sqrt(x.size) * step / 2 + math.sqrt(pixels) * float(np.linalg.norm(codec.offsets))
             + math.sqrt(x.size) / 2 + 2e-3 * float(np.linalg.norm(x.astype(float))))
    assert float(np.linalg.norm(y.astype(float) - x.ravel())) <= bound


def test_the_fitted_basis_finds_the_channels_subspace():
    x = _low_rank_maps((4, 48, 16, 16), rank=3)
    codec = _codec(x, step=4.0)
    pixel = codecs.get("dctcm", bits=8, transform=False, step=4.0, coder="ctxrans")
    assert relative_error(x, codec.reconstruct(x)) <= 1.1 * relative_error(x, pixel.reconstruct(x))
    assert len(codec.encode(x)) < 0.75 * len(pixel.encode(x))  # the ReLU bends the subspace: not 3/48
    basis = codec.basis.astype(np.float64)
    assert np.abs(basis.T @ basis - np.eye(48)).max() < 5e-3  # orthonormal up to float16


def test_offsets_take_the_clip_bias_off_every_channel():
    x = _low_rank_maps((4, 32, 16, 16), rank=4)  # many ReLU zeros: the clip cuts the error's negative half
    fitted = klt.fit(x)
    step = 8.0
    plain = codecs.get("klt", bits=8, step=step, **fitted)
    fixed = _codec(x, step)

    def worst_channel_bias(codec):
        error = codec.reconstruct(x).reshape(x.shape).astype(float) - x
        return float(np.abs(error.mean(axis=(0, 2, 3))).max())

    assert worst_channel_bias(plain) > 0.3
    assert worst_channel_bias(fixed) < 0.1


def test_the_curve_measures_what_the_codec_does():
    x = _low_rank_maps((2, 16, 8, 8))
    fitted = klt.fit(x)
    points = klt_curve(x, 8, fitted["basis"], fitted["mean"], [1.0, 4.0])
    for p in points:
        codec = codecs.get("klt", bits=8, step=p["step"], offsets=p["offsets"], **fitted)
        assert p["error"] == pytest.approx(relative_error(x, codec.reconstruct(x)))
    assert points[1]["bits_per_value"] < points[0]["bits_per_value"]


def test_config_and_container_round_trip():
    x = np.maximum(np.random.default_rng(0).normal(size=(2, 24, 6, 6)) @ np.ones((6, 6)) / 3, 0).astype(np.float32)
    codes = quantize(torch.from_numpy(x), params_for_range(8, float(x.min()), float(x.max()))).numpy().astype(np.uint8)
    codec = _codec(codes, step=2.0)
    again = codecs.from_config(codec.get_config())
    assert again == codec and again.fingerprint == codec.fingerprint
    assert np.array_equal(again.decode(codec.encode(codes)), codec.reconstruct(codes))
    params = {k: v for k, v in codec.get_config().items() if k not in ("id", "bits")}
    y = actzip.loads(actzip.dumps(x, codec="klt", bits=8, **params))
    assert y.shape == x.shape and relative_error(x, y) < 0.02
    assert "basis" not in codec.describe() and codec.describe()["side_bytes"] == 24 * 24 * 2 + 2 * 24 * 4


def test_a_stream_is_refused_by_a_codec_with_other_settings():
    x = _low_rank_maps((2, 16, 8, 8))
    stream = _codec(x, step=2.0).encode(x)
    with pytest.raises(CorruptStreamError, match="another basis"):
        _codec(x, step=4.0).decode(stream)
    with pytest.raises(CorruptStreamError, match="another basis"):
        _codec(_low_rank_maps((2, 16, 8, 8), seed=1), step=2.0).decode(stream)


def test_every_truncation_is_refused_and_flips_never_crash():
    x = _low_rank_maps((2, 16, 8, 8))
    codec = _codec(x)
    stream = codec.encode(x)
    for cut in range(len(stream)):
        with pytest.raises(CorruptStreamError):
            codec.decode(stream[:cut])
    for i in range(len(stream)):
        for bit in range(8):
            b = bytearray(stream)
            b[i] ^= 1 << bit
            try:
                out = codec.decode(bytes(b))
            except CorruptStreamError:
                continue
            assert out.shape == (x.size,)  # the fingerprint and shape fields pin the size


@pytest.mark.parametrize("params, message", [
    ({}, "needs a basis"), ({"basis": np.eye(3), "mean": np.zeros(4)}, "shape"),
    ({"basis": np.eye(1), "mean": np.zeros(1)}, "2..512"), ({"basis": np.eye(600), "mean": np.zeros(600)}, "2..512"),
    ({"basis": np.full((3, 3), np.nan), "mean": np.zeros(3)}, "NaN"),
    ({"basis": "not base64!", "mean": np.zeros(3)}, "base64"), ({"basis": "AAAA", "mean": np.zeros(3)}, "values"),
    ({"basis": np.eye(3), "mean": np.zeros(3), "step": 0.0}, "step"),
    ({"basis": np.eye(3), "mean": np.zeros(3), "offsets": np.zeros(2)}, "shape"),
    ({"basis": np.eye(3), "mean": np.zeros(3), "coder": "zvc"}, "coder"),
])
def test_bad_settings_are_refused(params, message):
    with pytest.raises(ValueError, match=message):
        codecs.get("klt", bits=8, **params)


def test_bad_inputs_are_refused():
    codec = codecs.get("klt", bits=8, basis=np.eye(4), mean=np.zeros(4))
    with pytest.raises(ValueError, match="for 4 channels"):
        codec.encode(np.zeros((2, 5, 3, 3), np.uint8))
    with pytest.raises(ValueError, match="2..512"):
        klt.fit(np.zeros((2, 1, 3, 3), np.uint8))
    with pytest.raises(ValueError, match="past 16 bits"):
        big = codecs.get("klt", bits=16, basis=np.eye(4), mean=np.zeros(4), step=1.0)
        big.encode(np.full((1, 4, 2, 2), 60000, np.uint16))

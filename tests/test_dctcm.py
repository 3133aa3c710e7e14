import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import actzip
from actzip import codecs
from actzip.codecs.layout import relative_error
from actzip.codecs.search import channel_curves, choose
from actzip.codecs.transform import dct_matrix, step_index
from actzip.errors import CorruptStreamError


def _relu_maps(shape, seed=0, scale=40.0, smooth=True):
    """ReLU-like codes whose channels are correlated (what the DCT exploits) when smooth."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(shape[0], 1, *shape[2:])) if smooth else 0
    x = np.maximum(scale * (base + 0.3 * rng.normal(size=shape)), 0)
    return np.minimum(np.rint(x), 255).astype(np.uint8)


def _bound(x: np.ndarray, keep, step: float, group: int) -> float:
    """The documented bound on ||decoded - x||: sqrt(dropped energy + kept coefficients * step^2 / 4)
    for the transform, plus sqrt(n) / 2 for the final rounding."""
    a, c, b = x.shape[0], x.shape[1], math.prod(x.shape[2:])
    groups = -(-c // group)
    padded = np.zeros((a, groups * group, b))
    padded[:, :c] = x.reshape(a, c, b)
    coef = np.einsum("fg,agpb->afpb", dct_matrix(group), padded.reshape(a, groups, group, b).transpose(0, 2, 1, 3))
    mask = np.array(keep, bool)
    dropped = float((coef[:, ~mask] ** 2).sum())
    kept = int(coef[:, mask].size)
    return math.sqrt(dropped + kept * step**2 / 4) + math.sqrt(x.size) / 2 + 1e-3 * math.sqrt(x.size)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(0, 3), c=st.integers(8, 40), h=st.integers(1, 6), group=st.sampled_from([8, 16]),
       keep=st.integers(1, 16), step=st.sampled_from([1.0, 1.5, 2.0, 4.0, 7.0]), seed=st.integers(0, 99),
       dtype=st.sampled_from([np.uint8, np.int8, np.uint16, np.int16]), coder=st.sampled_from(["zvc", "rans", "ctxrans", "ctx"]))
def test_decoded_error_is_within_the_stated_bound(n, c, h, group, keep, step, seed, dtype, coder):
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    x = rng.integers(info.min, info.max, size=(n, c, h, h), endpoint=True).astype(dtype)
    x[rng.random(x.shape) < 0.4] = 0
    if c < group:
        return
    keep = min(keep, group)
    codec = codecs.get("dctcm", group=group, keep=keep, step=step if dtype in (np.uint8, np.int8) else 64 * step,
                       coder=coder)
    y = codec.decode(codec.encode(x))
    assert y.dtype == x.dtype and y.shape == (x.size,)
    assert np.array_equal(y, codec.decode(codec.encode(x)))  # reproducible
    assert np.array_equal(y, codec.reconstruct(x))  # the fast path gives the same tensor
    err = np.linalg.norm(y.astype(np.float64) - x.ravel())
    assert err <= _bound(x, codec.keep, codec.step, group)


def test_arbitrary_keep_masks_and_channels_not_divisible_by_the_group():
    x = _relu_maps((2, 21, 5, 5))
    for mask in ([1, 0, 1, 0, 0, 0, 0, 1], [0, 1, 1, 0, 0, 0, 0, 0]):
        codec = codecs.get("dctcm", group=8, keep=mask, step=1.0)
        y = codec.decode(codec.encode(x))
        assert np.linalg.norm(y.astype(float) - x.ravel()) <= _bound(x, mask, 1.0, 8)


def test_keeping_everything_at_step_one_is_nearly_lossless_and_pixel_mode_is_lossless():
    x = _relu_maps((2, 16, 6, 6))
    dct = codecs.get("dctcm", group=8, step=1.0, budget=None)  # no budget: exactly these settings
    assert np.abs(dct.decode(dct.encode(x)).astype(int) - x.ravel()).max() <= 1
    pixel = codecs.get("dctcm", transform=False, step=1.0, budget=None)
    assert np.array_equal(pixel.decode(pixel.encode(x)), x.ravel())


def test_pixel_mode_error_is_at_most_half_a_step_plus_rounding():
    x = _relu_maps((3, 8, 7, 7), smooth=False)
    codec = codecs.get("dctcm", transform=False, step=6.0)
    y = codec.decode(codec.encode(x))
    assert np.abs(y.astype(float) - x.ravel()).max() <= 3.5


def test_the_transform_pays_on_dense_correlated_channels_and_not_on_sparse_ones():
    dense = _relu_maps((4, 32, 8, 8), scale=60.0)
    dense = np.maximum(dense, 20).astype(np.uint8)  # no zeros at all: zvc alone cannot help
    chosen = choose(dense, 8, budget=0.01)
    assert chosen["transform"]
    dct = codecs.get("dctcm", bits=8, **chosen)
    zvc = codecs.get("zvc", bits=8)
    assert len(dct.encode(dense)) < 0.6 * len(zvc.encode(dense))
    assert relative_error(dense, dct.decode(dct.encode(dense))) <= 0.01

    sparse = _relu_maps((4, 32, 8, 8), smooth=False)
    sparse[np.random.default_rng(1).random(sparse.shape) < 0.9] = 0
    assert not choose(sparse, 8, budget=1e-4)["transform"]


@pytest.mark.parametrize("budget", [1e-3, 1e-2, 5e-2])
def test_budget_mode_keeps_the_error_within_the_budget(budget):
    x = _relu_maps((2, 32, 8, 8))
    codec = codecs.get("dctcm", bits=8, budget=budget)
    y = codec.decode(codec.encode(x))
    assert relative_error(x, y) <= budget  # the whole array is the search's sample here
    bigger = codecs.get("dctcm", bits=8, budget=budget * 4)
    assert len(bigger.encode(x)) <= len(codec.encode(x))


def test_container_and_config_round_trip():
    x = np.maximum(np.random.default_rng(0).normal(1, 1, size=(2, 16, 5, 5)), 0).astype(np.float32)
    stream = actzip.dumps(x, codec="dctcm", bits=8, step=2.0)
    y = actzip.loads(stream)
    assert y.shape == x.shape and relative_error(x, y) < 0.05
    codec = codecs.get("dctcm", bits=8, group=16, keep=[1] * 3 + [0] * 13, coder="rans", budget=0.02)
    assert codecs.from_config(codec.get_config()) == codec
    assert "dctcm" in codecs.names(lossy=True) and "dctcm" not in codecs.names()


@pytest.mark.parametrize("params, message", [
    ({"group": 3}, "power of two"), ({"group": 0}, "power of two"), ({"group": 128}, "power of two"),
    ({"keep": [1, 0, 1]}, "entries"), ({"keep": 9}, "outside"), ({"keep": [0] * 8}, "no frequency"),
    ({"budget": 0.0}, r"\(0, 1\)"), ({"budget": 1.0}, r"\(0, 1\)"), ({"step": 0.0}, "step"),
    ({"coder": "gzip"}, "coder"), ({"budget": "abc"}, "'auto'"),
])
def test_bad_settings_are_refused(params, message):
    with pytest.raises(ValueError, match=message):
        codecs.get("dctcm", **params)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="fewer than the DCT group"):
        codecs.get("dctcm", group=16, budget=None).encode(np.ones((1, 8, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="channel axis"):
        codecs.get("dctcm").encode(np.ones(40, np.uint8))
    with pytest.raises(ValueError, match="past 16 bits"):
        codecs.get("dctcm", group=16, step=1.0).encode(np.full((1, 16, 2, 2), 65535, np.uint16))
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        choose(np.ones((1, 8, 2, 2), np.uint8), 8, budget=2.0)


def _stream(**params):
    return codecs.get("dctcm", bits=8, **({"keep": 3, "step": 2.0} | params)).encode(_relu_maps((2, 20, 6, 6)))


@pytest.mark.parametrize("params", [{}, {"transform": False}, {"coder": "ctx"}, {"transform": False, "coder": "ctx"}],
                         ids=["dct", "requant", "dct-ctx", "requant-ctx"])
def test_every_truncation_is_refused_and_flips_never_crash(params):
    stream = _stream(**params)
    for cut in range(len(stream)):
        with pytest.raises(CorruptStreamError):
            codecs.get("dctcm").decode(stream[:cut])
    for i in range(min(len(stream), 40)):
        for bit in range(8):
            b = bytearray(stream)
            b[i] ^= 1 << bit
            try:
                out = codecs.get("dctcm").decode(bytes(b))
            except CorruptStreamError:
                continue
            assert out.ndim == 1 and out.size <= 64 * 8 * len(b)


def test_a_forged_shape_is_refused_before_allocating():
    stream = _stream()
    from actzip.codecs.base import parse_header, write_varint
    h = parse_header(stream)
    forged = stream[:2] + write_varint(2**40) + stream[h.size:]
    with pytest.raises(CorruptStreamError):
        codecs.get("dctcm").decode(forged)


def _channel_codec(channels: int, **params):
    steps = [2.0 ** (k % 17 / 4) for k in range(channels)]  # 1 .. 16 in quarter octaves
    return codecs.get("dctcm", bits=8, transform=False, channel_steps=steps, **params), np.array(steps)


@pytest.mark.parametrize("coder", ["zvc", "rans", "ctxrans", "ctx"])
def test_each_channel_is_requantized_with_its_own_step(coder):
    x = _relu_maps((3, 20, 6, 6), smooth=False)
    codec, steps = _channel_codec(20, coder=coder)
    y = codec.decode(codec.encode(x)).reshape(x.shape)
    assert np.array_equal(y.ravel(), codec.reconstruct(x))
    err = np.abs(y.astype(float) - x).max(axis=(0, 2, 3))
    assert (err <= steps / 2 + 0.5).all() and err[0] == 0  # the first channel's step is 1: exact
    assert err[16] > err[4]  # a coarser step, a larger error
    assert codecs.from_config(codec.get_config()) == codec


def test_channel_curves_measure_what_the_codec_does():
    x = _relu_maps((2, 12, 8, 8), smooth=False)
    curves = channel_curves(x, 8)
    assert curves["error"].shape == curves["bits_per_value"].shape == (12, len(curves["steps"]))
    assert (curves["error"][:, 0] == 0).all()
    np.testing.assert_allclose(curves["energy"], np.square(x.astype(float)).sum(axis=(0, 2, 3)))
    j = 8  # step 4
    codec = codecs.get("dctcm", bits=8, transform=False, channel_steps=[curves["steps"][j]] * 12)
    y = codec.reconstruct(x).reshape(x.shape).astype(float)
    np.testing.assert_allclose(curves["error"][:, j], np.square(y - x).sum(axis=(0, 2, 3)))
    q = np.floor(x[:, 3].astype(float) / 4 + 0.5).ravel()
    p = np.unique(q, return_counts=True)[1] / q.size
    assert math.isclose(curves["bits_per_value"][3, j], -(p * np.log2(p)).sum())


def test_bad_channel_steps_are_refused():
    with pytest.raises(ValueError, match=r"2\^\(k/4\)"):
        codecs.get("dctcm", transform=False, channel_steps=[1.0, 3.0])
    with pytest.raises(ValueError, match="pixel-domain"):
        codecs.get("dctcm", channel_steps=[1.0, 2.0])
    with pytest.raises(ValueError, match="3 channel steps for 4 channels"):
        codecs.get("dctcm", transform=False, channel_steps=[1.0, 2.0, 4.0]).encode(np.ones((1, 4, 2, 2), np.uint8))


def test_corrupt_channel_steps_are_refused():
    x = _relu_maps((2, 20, 6, 6))
    codec, steps = _channel_codec(20)
    stream = codec.encode(x)
    start = stream.index(bytes(step_index(v) for v in steps))
    for cut in range(start, start + 20):
        with pytest.raises(CorruptStreamError):
            codec.decode(stream[:cut])
    forged = bytearray(stream)
    forged[start + 5] = 200
    with pytest.raises(CorruptStreamError, match="channel step"):
        codec.decode(bytes(forged))

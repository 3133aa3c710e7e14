"""actzip codecs as real clients use them: numcodecs' own conformance helpers, and zarr stores in
both formats and both memory orders, bit-exact."""

import numpy as np
import pytest

numcodecs = pytest.importorskip("numcodecs")
zarr = pytest.importorskip("zarr")
common = pytest.importorskip("numcodecs.tests.common")

from actzip import codecs  # noqa: E402
from actzip.codecs import numcodecs_compat  # noqa: E402
from actzip.codecs.zarr3 import ActzipCodec  # noqa: E402

NAMES = codecs.names()
RNG = np.random.default_rng(0)
ARRAYS = [  # every dtype the codecs declare, C and Fortran order, empty, and wider ints that fit 16 bits
    RNG.integers(0, 200, (4, 8, 6)).astype(np.uint8),
    RNG.integers(-100, 100, 300).astype(np.int8),
    RNG.integers(0, 4000, (10, 30)).astype(np.uint16),
    RNG.integers(-3000, 3000, (3, 5, 20)).astype(np.int16),
    np.asfortranarray(RNG.integers(0, 200, (6, 7)).astype(np.uint8)),
    np.asfortranarray(RNG.integers(-900, 900, (5, 9)).astype(np.int16)),
    np.zeros(0, np.uint8),
    np.arange(-40, 40, dtype=np.int64).reshape(8, 10),
    np.asfortranarray(np.arange(24, dtype=np.uint32).reshape(4, 6)),
]


@pytest.mark.parametrize("name", NAMES)
def test_numcodecs_conformance_helpers(name):
    codec = numcodecs.get_codec({"id": f"actzip.{name}"})  # found through the entry point
    for a in ARRAYS:
        common.check_encode_decode(a, codec)
        common.check_encode_decode_array(a, codec)
    common.check_config(codec)
    common.check_err_decode_object_buffer(codec)
    common.check_err_encode_object_buffer(codec)
    common.check_max_buffer_size(codec)
    assert eval(repr(codec), vars(numcodecs_compat)) == codec  # check_repr, in the codecs' own namespace


@pytest.mark.parametrize("name", ["seg", "rans"])
def test_numcodecs_refuses_what_it_cannot_code_with_a_clear_error(name):
    codec = numcodecs.get_codec({"id": f"actzip.{name}"})
    with pytest.raises(TypeError, match="quantize floats first"):
        codec.encode(np.ones(4, np.float32))
    with pytest.raises(ValueError, match="outside the 16 bits"):
        codec.encode(np.array([0, 70000], np.int64))
    codec.max_buffer_size = 200
    big = numcodecs.get_codec({"id": f"actzip.{name}"}).encode(np.zeros(1000, np.uint8))
    with pytest.raises(ValueError, match="max_buffer_size"):  # a short stream of a large array
        codec.decode(big)


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("name", NAMES)
def test_zarr_stores_activations_bit_exactly(zarr_format, order, name):
    for dtype in (np.uint8, np.int8, np.uint16, np.int16):
        low = 0 if np.dtype(dtype).kind == "u" else -50
        a = RNG.integers(-50, 200, (4, 8, 6, 6)).clip(low, 120).astype(dtype)
        store = zarr.storage.MemoryStore()
        if zarr_format == 3:
            z = zarr.create_array(store, shape=a.shape, chunks=(2, 8, 6, 6), dtype=a.dtype, compressors=None,
                                  serializer=ActzipCodec(name), config={"order": order})
        else:
            z = zarr.create_array(store, shape=a.shape, chunks=(2, 8, 6, 6), dtype=a.dtype, zarr_format=2,
                                  order=order, compressors=numcodecs.get_codec({"id": f"actzip.{name}"}))
        z[:] = a
        assert np.array_equal(zarr.open_array(store, mode="r")[:], a), (dtype, order)


def test_zarr3_refuses_float_arrays_and_lossy_codecs():
    with pytest.raises(ValueError, match="lossless"):
        ActzipCodec("dctcm")
    with pytest.raises(ValueError, match="quantize them first"):
        zarr.create_array(zarr.storage.MemoryStore(), shape=(4,), dtype="float32", serializer=ActzipCodec("seg"),
                          compressors=None)
    codec = ActzipCodec("rle", run_bits=3)
    assert ActzipCodec.from_dict(codec.to_dict()) == codec

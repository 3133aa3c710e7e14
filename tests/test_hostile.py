"""The container against forged headers: valid framing and checksum around a header anyone can
write. `loads` and `info` must raise CorruptStreamError, or return an array when the forgery is a
valid stream, and never allocate what the header claims before checking it."""

import json
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import actzip
from actzip import codecs
from actzip.codecs.base import pack_header, write_varint
from actzip.errors import CorruptStreamError
from actzip.stream import MAGIC, StreamTooLargeError, info


def frame(header: bytes | dict, payload: bytes) -> bytes:
    """A container around `header` with its framing and CRC right, as a forger would make it."""
    if isinstance(header, dict):
        header = json.dumps(header).encode()
    crc = zlib.crc32(payload, zlib.crc32(header))
    return MAGIC + b"\x01" + write_varint(len(header)) + header + write_varint(len(payload)) + payload + \
        crc.to_bytes(4, "little")


X = np.maximum(np.random.default_rng(0).normal(size=(2, 4, 5, 5)), 0).astype(np.float32)
VALID = {name: actzip.dumps(X, codec=name, bits=8, per_channel=name == "seg") for name in codecs.names()}


def parts(stream: bytes) -> tuple[dict, bytes]:
    header, payload = actzip.stream.read_header(stream)
    return header, bytes(payload)


def must_refuse_or_decode(stream: bytes, max_size=1 << 24) -> None:
    try:
        out = actzip.loads(stream, max_size=max_size)
    except CorruptStreamError:
        return
    assert isinstance(out, np.ndarray) and out.nbytes <= max_size


REGRESSIONS = {  # each made `loads` raise something other than CorruptStreamError, or allocate GBs
    "nested brackets": b"[" * 100000,
    "bits infinity": {"quant": {"bits": float("inf")}},
    "bits NaN": {"quant": {"bits": float("nan")}},
    "axis string": {"quant": {"axis": "1", "scale": [1.0] * 4}},
    "axis out of range": {"quant": {"axis": 7, "scale": [1.0]}},
    "axis negative": {"quant": {"axis": -1, "scale": [1.0] * 5}},
    "scale not a list": {"quant": {"scale": 3}},
    "scale huge": {"quant": {"scale": [10**400]}},
    "scale underflows": {"quant": {"scale": [1e-400]}},
    "scale string": {"quant": {"scale": ["1"]}},
    "shape overflows strides": {"shape": [0, 2**62, 2**62]},
    "shape of 2^31 values": {"shape": [2**31]},
    "rank 40": {"shape": [1] * 40},
    "shape float": {"shape": [2.0, 4, 5, 5]},
    "dtype list": {"dtype": ["float32"]},
    "codec not a dict": {"codec": "seg"},
    "codec bits huge": {"codec": {"id": "seg", "bits": 10**30}},
    "codec nested": {"codec": {"id": "seg", "bits": [[[[8]]]]}},
    "signed number": {"quant": {"signed": 1}},
}


def forged(name: str, change) -> bytes:
    header, payload = parts(VALID[name])
    if isinstance(change, bytes):
        return frame(change, payload)
    for key, value in change.items():
        header[key] = {**header[key], **value} if isinstance(value, dict) and isinstance(header[key], dict) else value
    return frame(json.dumps(header).encode(), payload)


@pytest.mark.parametrize("case", list(REGRESSIONS))
def test_forged_headers_are_refused(case):
    stream = forged("seg", REGRESSIONS[case])
    with pytest.raises(CorruptStreamError):
        actzip.loads(stream)
    with pytest.raises(CorruptStreamError):
        info(stream)


def test_a_small_stream_of_a_huge_tensor_needs_max_size():
    zeros = np.zeros(1 << 22, np.float32)  # 16 MB of zeros: a few hundred bytes of rans
    stream = actzip.dumps(zeros, codec="rans")
    assert len(stream) < 2000
    with pytest.raises(StreamTooLargeError, match="max_size"):
        actzip.loads(stream, max_size=1 << 20)
    assert actzip.loads(stream).shape == zeros.shape  # the default allows it
    header, payload = parts(stream)
    header["shape"] = [1 << 31]  # the same payload, claiming 8 GiB: refused before decoding
    with pytest.raises(StreamTooLargeError):
        actzip.loads(frame(json.dumps(header).encode(), payload))


def test_dumps_refuses_what_loads_would_refuse():
    with pytest.raises(ValueError, match="8 dimensions"):
        actzip.dumps(np.zeros([1] * 9, np.float32))
    with pytest.raises(ValueError, match="axis"):
        actzip.dumps(X, per_channel=True, axis=4)


def test_rans_symbol_count_of_2_to_the_64_is_corrupt():
    a = np.array([0, 1, 1, 2] * 8, np.uint8)
    stream = codecs.get("rans").encode(a)
    head = len(pack_header(a, 8)) + 1  # the header, then one chunk size
    assert stream[head] == 3  # three symbols in the table, then their counts
    forged_table = stream[:head + 1] + write_varint(2**64) + stream[head + 2:]
    forged_stream = forged_table[:head - 1] + write_varint(len(forged_table) - head) + forged_table[head:]
    with pytest.raises(CorruptStreamError, match="symbol count"):
        codecs.get("rans").decode(forged_stream)


def _field_values():
    """Values a forger would put in a header field: wrong types, extremes, deep and long ones."""
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                        st.text(max_size=8))
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=6),
                                                         st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                        max_leaves=12)


def _fuzz_header(data):
    name = data.draw(st.sampled_from(sorted(VALID)))
    header, payload = parts(VALID[name])
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from(["shape", "dtype", "codec", "quant"]))
        if isinstance(header[key], dict) and data.draw(st.booleans()):
            field = data.draw(st.sampled_from(sorted(header[key]) + ["extra"]))
            header[key] = {**header[key], field: data.draw(_field_values())}
        else:
            header[key] = data.draw(_field_values())
    try:
        text = json.dumps(header).encode()
    except (ValueError, RecursionError):
        return
    must_refuse_or_decode(frame(text, payload))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_forged_headers(data):
    _fuzz_header(data)


@pytest.mark.slow
@settings(max_examples=20000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_forged_headers_long(data):
    _fuzz_header(data)


def test_the_container_checks_bits_as_the_quantizer_does():
    from actzip import quant, stream

    assert (stream.MIN_BITS, stream.MAX_BITS) == (quant.MIN_BITS, quant.MAX_BITS)

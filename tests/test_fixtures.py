"""Reference streams written by earlier versions (tests/fixtures/streams/) decode to the arrays kept
beside them, forever: a format change adds fixtures and must not break these."""

from pathlib import Path

import numpy as np
import pytest

import actzip
from actzip import codecs
from actzip.codecs import numcodecs_compat

HERE = Path(__file__).parent / "fixtures" / "streams"
STREAMS = sorted(p.stem for p in HERE.glob("*.bin"))


def decode(name: str, data: bytes) -> np.ndarray:
    if name.startswith("container-"):
        return actzip.loads(data)
    if name.startswith("numcodecs-"):
        return getattr(numcodecs_compat, name.split("-")[1])().decode(data)
    return codecs.get(name.split("-")[0]).decode(data)


@pytest.mark.parametrize("name", STREAMS)
def test_reference_stream_decodes_to_its_array(name):
    got = decode(name, (HERE / f"{name}.bin").read_bytes())
    want = np.load(HERE / f"{name}.npy")
    assert got.dtype == want.dtype and np.array_equal(got, want)


def test_every_codec_and_dtype_has_reference_streams():
    for codec in codecs.names():
        for dtype in ("uint8", "int8", "uint16", "int16"):
            assert f"{codec}-{dtype}" in STREAMS, f"add fixtures: python {HERE / 'make.py'}"
    assert any(s.startswith("container-v1-") for s in STREAMS)

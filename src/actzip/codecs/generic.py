"""`zstd` and `lz4`: general-purpose byte compressors over the values, the baselines users try first.

The values (zigzag for signed) are laid out one byte each for b <= 8, two little-endian bytes each
for b > 8, and handed to the compressor. Cost: whatever the compressor makes of them.

>>> import numpy as np
>>> from actzip.codecs import get
>>> c = get("zstd", level=19)
>>> c.decode(c.encode(np.zeros(1000, dtype=np.uint8))).sum()
np.uint64(0)
"""

from __future__ import annotations

import io

import numpy as np

from ..errors import CorruptStreamError
from .base import ChunkedCodec, Header, register, unzigzag, zigzag


def _to_bytes(a: np.ndarray, bits: int) -> bytes:
    return zigzag(a).astype("<u2" if bits > 8 else np.uint8).tobytes()


def _from_bytes(raw: bytes, h: Header, what: str) -> np.ndarray:
    dtype = np.dtype("<u2" if h.bits > 8 else np.uint8)
    if len(raw) != h.n * dtype.itemsize:
        raise CorruptStreamError(f"{what}: decompressed {len(raw)} bytes, header says {h.n} values")
    u = np.frombuffer(raw, dtype).astype(np.uint32)
    if u.size and int(u.max()) >> h.bits:
        raise CorruptStreamError(f"{what}: a value does not fit {h.bits} bits")
    return unzigzag(u, h.dtype)


@register
class Zstd(ChunkedCodec):
    """zstd over the values laid out as bytes (a baseline).

    Parameters:
        bits: the values' bit width (None: taken from each input).
        level: the zstd level, -7..22.
    """

    codec_id = "zstd"
    values_per_bit = 8192.0  # zstd's RLE blocks reach about 32768:1

    def __init__(self, bits: int | None = None, level: int = 3):
        super().__init__(bits)
        if not -7 <= level <= 22:
            raise ValueError(f"zstd level must be in -7..22, got {level}")
        self.level = level

    def _params(self):
        return {"bits": self.bits, "level": self.level}

    def _encode(self, a, bits):
        import zstandard

        return zstandard.ZstdCompressor(level=self.level).compress(_to_bytes(a, bits))

    def _decode(self, h: Header, payload: bytes):
        import zstandard

        expected = h.n * (2 if h.bits > 8 else 1)
        try:
            # a streaming read stops at what the header justifies: a frame that claims a huge
            # content size must not make zstd allocate it
            with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(payload)) as reader:
                raw = reader.read(expected + 1)
        except zstandard.ZstdError as e:
            raise CorruptStreamError(f"zstd: {e}") from None
        return _from_bytes(raw, h, "zstd")


@register
class LZ4(ChunkedCodec):
    """lz4 over the values laid out as bytes (a baseline)."""

    codec_id = "lz4"
    values_per_bit = 40.0  # an LZ4 block expands at most about 255:1

    def _encode(self, a, bits):
        import lz4.block

        return lz4.block.compress(_to_bytes(a, bits), store_size=False)

    def _decode(self, h: Header, payload: bytes):
        import lz4.block

        expected = h.n * (2 if h.bits > 8 else 1)
        try:
            raw = lz4.block.decompress(payload, uncompressed_size=expected)
        except lz4.block.LZ4BlockError as e:
            raise CorruptStreamError(f"lz4: {e}") from None
        return _from_bytes(raw, h, "lz4")

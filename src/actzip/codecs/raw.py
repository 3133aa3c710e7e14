"""`raw`: every value on exactly b bits (zigzag for signed). Cost: n * b bits, plus the header.

The baseline every compression ratio is taken against.

>>> import numpy as np
>>> from actzip.codecs import get
>>> c = get("raw", bits=4)
>>> s = c.encode(np.array([1, 15, 0], dtype=np.uint8))
>>> c.decode(s).tolist()
[1, 15, 0]
"""

from __future__ import annotations

import numpy as np

from ..errors import CorruptStreamError
from .base import ChunkedCodec, Header, register, unzigzag, zigzag
from .bits import pack_fixed, packed_bytes, padded, unpack_fixed


def pack_values(u: np.ndarray, bits: int) -> bytes:
    """uint32 values on `bits` bits each, MSB first (byte-aligned widths take a numpy fast path)."""
    if bits == 8:
        return u.astype(np.uint8).tobytes()
    if bits == 16:
        return u.astype(">u2").tobytes()
    out = np.zeros(packed_bytes(u.size * bits), dtype=np.uint8)
    pack_fixed(u, bits, out)
    return out.tobytes()


def unpack_values(payload: bytes, start: int, n: int, bits: int, what: str) -> np.ndarray:
    """Inverse of pack_values from payload[start:], which must hold exactly the n values."""
    size = packed_bytes(n * bits)
    if len(payload) - start != size:
        raise CorruptStreamError(f"{what}: {n} values of {bits} bits take {size} bytes, stream has {len(payload) - start}")
    if bits == 8:
        return np.frombuffer(payload, dtype=np.uint8, count=n, offset=start).astype(np.uint32)
    if bits == 16:
        return np.frombuffer(payload, dtype=">u2", count=n, offset=start).astype(np.uint32)
    out = np.empty(n, dtype=np.uint32)
    unpack_fixed(padded(payload, start), n, bits, out)
    return out


@register
class Raw(ChunkedCodec):
    """Every value on b bits: n * b bits."""

    codec_id = "raw"

    def _encode(self, a, bits):
        return pack_values(zigzag(a), bits)

    def _decode(self, h: Header, payload: bytes):
        return unzigzag(unpack_values(payload, 0, h.n, h.bits, "raw"), h.dtype)

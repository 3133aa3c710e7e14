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

from .base import ChunkedCodec, Header, register, unzigzag, zigzag
from .bits import pack_values, unpack_values


@register
class Raw(ChunkedCodec):
    """Every value on b bits: n * b bits."""

    codec_id = "raw"

    def _encode(self, a, bits):
        return pack_values(zigzag(a), bits)

    def _decode(self, h: Header, payload: bytes):
        return unzigzag(unpack_values(payload, 0, h.n, h.bits, "raw"), h.dtype)

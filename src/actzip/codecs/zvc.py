"""`zvc`: zero-value compression. A bitmap with one bit per value (1 = non-zero), then every
non-zero value on b bits (zigzag for signed). Cost: n + nnz * b bits (each part padded to a byte).

>>> import numpy as np
>>> from actzip.codecs import get
>>> c = get("zvc")
>>> c.decode(c.encode(np.array([0, 0, 7, 0, 255], dtype=np.uint8))).tolist()
[0, 0, 7, 0, 255]
"""

from __future__ import annotations

import numpy as np

from ..errors import CorruptStreamError
from .base import ChunkedCodec, Header, register, unzigzag, zigzag
from .bits import pack_values, unpack_values


@register
class ZVC(ChunkedCodec):
    """Zero-value compression: a 1-bit zero map, then the non-zeros on b bits."""

    codec_id = "zvc"

    def _encode(self, a, bits):
        nonzero = a != 0
        return np.packbits(nonzero).tobytes() + pack_values(zigzag(a[nonzero]), bits)

    def _decode(self, h: Header, payload: bytes):
        map_bytes = (h.n + 7) // 8
        if len(payload) < map_bytes:
            raise CorruptStreamError("zvc: stream truncated inside the zero map")
        nonzero = np.unpackbits(np.frombuffer(payload, np.uint8, map_bytes), count=h.n).view(bool)
        values = unpack_values(payload, map_bytes, int(np.count_nonzero(nonzero)), h.bits, "zvc")
        if values.size and not values.all():
            raise CorruptStreamError("zvc: a value marked non-zero is zero")
        out = np.zeros(h.n, dtype=h.dtype)
        out[nonzero] = unzigzag(values, h.dtype)
        return out

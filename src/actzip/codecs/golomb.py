"""Exponential-Golomb codes: `eg` (every value) and `seg` (sparse, Georgiadis 2019).

Order-k exp-Golomb of u >= 0: with w = u + 2^k and L = floor(log2 w), write L - k zeros and then
the L + 1 bits of w: 2L - k + 1 bits in all.
- `eg`:  every value (zigzag for signed) costs its order-k exp-Golomb code.
- `seg`: a zero costs one bit "0"; a non-zero x costs a "1" and the order-k code of x - 1.
k (0..16) is chosen per stream to minimise the size unless given; it is one byte of the stream.

Decoding is table-driven: the next 12 bits index a table of (value, length) for every code that
short, and only longer codes take the bit-by-bit path.

>>> import numpy as np
>>> from actzip.codecs import get
>>> c = get("seg", k=0)
>>> s = c.encode(np.array([0, 0, 1, 2], dtype=np.uint8))
>>> c.decode(s).tolist(), len(s) - 3   # "0" "0" "1"+"1" "1"+"010": 8 bits, then the k byte
([0, 0, 1, 2], 2)
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..errors import CorruptStreamError
from .base import Codec, Header, register, unzigzag, zigzag
from .bits import packed_bytes, padded, peek

MAX_K = 16
TABLE_BITS = 12

_LOG2_BYTE = np.zeros(256, np.int64)
for _v in range(2, 256):
    _LOG2_BYTE[_v] = _LOG2_BYTE[_v >> 1] + 1


@njit(cache=True, inline="always")
def _floor_log2(w, log2_byte):
    if w < 256:
        return log2_byte[w]
    if w < 65536:
        return 8 + log2_byte[w >> 8]
    if w < 16777216:
        return 16 + log2_byte[w >> 16]
    return 24 + log2_byte[w >> 24]


@njit(cache=True, inline="always")
def _code(x, k, sparse, log2_byte):
    """(code, length) of value x."""
    if sparse:
        if x == 0:
            return np.int64(0), 1
        x -= 1
    w = np.int64(x) + (np.int64(1) << k)
    length = 2 * _floor_log2(w, log2_byte) - k + 1
    if sparse:
        return (np.int64(1) << length) | w, length + 1
    return w, length


@njit(cache=True)
def _encode(u, k, sparse, out, log2_byte):
    acc = np.uint64(0)
    nacc = 0
    o = 0
    for i in range(u.shape[0]):
        code, length = _code(u[i], k, sparse, log2_byte)
        acc = (acc << np.uint64(length)) | np.uint64(code)
        nacc += length
        while nacc >= 8:
            nacc -= 8
            out[o] = np.uint8((acc >> np.uint64(nacc)) & np.uint64(0xFF))
            o += 1
    if nacc:
        out[o] = np.uint8((acc << np.uint64(8 - nacc)) & np.uint64(0xFF))


@njit(cache=True)
def _decode_table(k, sparse, maxval, log2_byte):
    """value and length for every TABLE_BITS-bit prefix that starts with a whole code (length 0: none)."""
    size = 1 << TABLE_BITS
    values = np.zeros(size, np.uint32)
    lengths = np.zeros(size, np.uint8)
    x = 0
    while x <= maxval:
        code, length = _code(x, k, sparse, log2_byte)
        if length > TABLE_BITS:
            if not sparse or x > 0:
                break  # lengths only grow with x (past the 1-bit zero of seg)
        else:
            first = code << (TABLE_BITS - length)
            for j in range(first, first + (1 << (TABLE_BITS - length))):
                values[j] = x
                lengths[j] = length
        x += 1
    return values, lengths


@njit(cache=True)
def _decode(buf, payload_bits, n, k, sparse, maxval, out, values, lengths):
    """Returns the bits read, or -1 if the stream is malformed (overrun, overlong code, value too big)."""
    pos = 0
    for i in range(n):
        prefix = peek(buf, pos, TABLE_BITS)
        length = lengths[prefix]
        if length:
            out[i] = values[prefix]
            pos += length
        else:
            p = pos + 1 if sparse else pos  # seg: a long code is always a non-zero's "1" + exp-Golomb
            zeros = 0
            while peek(buf, p, 1) == 0:
                zeros += 1
                p += 1
                if zeros > 24 or p > payload_bits:
                    return -1
            width = zeros + k + 1
            x = peek(buf, p, width) - (np.int64(1) << k)
            p += width
            if sparse:
                x += 1
            if x > maxval:
                return -1
            out[i] = x
            pos = p
        if pos > payload_bits:
            return -1
    return pos


def _bits_per_k(counts: np.ndarray, sparse: bool) -> np.ndarray:
    """Total payload bits for each k in 0..MAX_K, from the histogram of values."""
    x = np.nonzero(counts)[0]
    c = counts[x].astype(np.int64)
    totals = np.zeros(MAX_K + 1, np.int64)
    if sparse:
        zero_count = c[0] if x.size and x[0] == 0 else 0
        nz = x > 0
        x, c = x[nz] - 1, c[nz]
        totals += zero_count
    for k in range(MAX_K + 1):
        w = x + (1 << k)
        lengths = 2 * np.floor(np.log2(w)).astype(np.int64) - k + 1 + (1 if sparse else 0)
        totals[k] += int((lengths * c).sum())
    return totals


class _Golomb(Codec):
    sparse: bool

    def __init__(self, bits: int | None = None, k: int | None = None):
        super().__init__(bits)
        if k is not None and not 0 <= k <= MAX_K:
            raise ValueError(f"k must be in 0..{MAX_K}, got {k}")
        self.k = k

    def _params(self):
        return {"bits": self.bits, "k": self.k}

    def _encode(self, a, bits):
        u = zigzag(a)
        totals = _bits_per_k(np.bincount(u, minlength=1), self.sparse)
        k = int(np.argmin(totals)) if self.k is None else self.k
        out = np.zeros(packed_bytes(int(totals[k])), np.uint8)
        _encode(u, k, self.sparse, out, _LOG2_BYTE)
        return bytes([k]) + out.tobytes()

    def _decode(self, h: Header, payload: bytes):
        if not payload:
            raise CorruptStreamError(f"{self.codec_id}: stream truncated before k")
        k = payload[0]
        if k > MAX_K:
            raise CorruptStreamError(f"{self.codec_id}: k = {k} is out of range")
        maxval = (1 << h.bits) - 1
        values, lengths = _decode_table(k, self.sparse, maxval, _LOG2_BYTE)
        u = np.empty(h.n, np.uint32)
        payload_bits = 8 * (len(payload) - 1)
        used = _decode(padded(payload, 1), payload_bits, h.n, k, self.sparse, maxval, u, values, lengths)
        if used < 0 or packed_bytes(used) != len(payload) - 1:
            raise CorruptStreamError(f"{self.codec_id}: malformed or truncated code stream")
        return unzigzag(u, h.dtype)


@register
class ExpGolomb(_Golomb):
    """Order-k exp-Golomb of every value, k chosen per stream."""

    codec_id = "eg"
    sparse = False
    values_per_bit = 1.0


@register
class SparseExpGolomb(_Golomb):
    """Sparse exp-Golomb: a zero is 1 bit, a non-zero x is 1 bit + exp-Golomb(x - 1)."""

    codec_id = "seg"
    sparse = True
    values_per_bit = 1.0

"""Exponential-Golomb codes: `eg` (every value) and `seg` (sparse, Georgiadis 2019).

Order-k exp-Golomb of u >= 0: with w = u + 2^k and L = floor(log2 w), write L - k zeros and then
the L + 1 bits of w: 2L - k + 1 bits in all.
- `eg`:  every value (zigzag for signed) costs its order-k exp-Golomb code.
- `seg`: a zero costs one bit "0"; a non-zero x costs a "1" and the order-k code of x - 1.
k (0..16) is chosen per stream to minimise the size unless given; it is one byte of the stream.

Decoding is table-driven: the next 12 bits index a table of (value, length) for every code that
short (seg's one-bit zero included), and only longer codes take a slow path.

>>> import numpy as np
>>> from actzip.codecs import get
>>> c = get("seg", k=0)
>>> s = c.encode(np.array([0, 0, 1, 2], dtype=np.uint8))
>>> c.decode(s).tolist(), len(s) - 4   # header and chunk size, then k, then "0" "0" "1"+"1" "1"+"010"
([0, 0, 1, 2], 2)
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..errors import CorruptStreamError
from .base import ChunkedCodec, Header, register
from numba.cpython.unsafe.numbers import leading_zeros

from .bits import packed_bytes, padded, refill, unzigzag_value, zigzag_histogram, zigzag_value

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


@njit(cache=True, nogil=True)
def _encode(a, signed, k, sparse, out, log2_byte):
    acc = np.uint64(0)
    nacc = 0
    o = 0
    for i in range(a.shape[0]):
        code, length = _code(zigzag_value(a[i], signed), k, sparse, log2_byte)
        acc = (acc << np.uint64(length)) | np.uint64(code)
        nacc += length
        while nacc >= 8:
            nacc -= 8
            out[o] = np.uint8((acc >> np.uint64(nacc)) & np.uint64(0xFF))
            o += 1
    if nacc:
        out[o] = np.uint8((acc << np.uint64(8 - nacc)) & np.uint64(0xFF))


@njit(cache=True, nogil=True)
def _decode_table(k, sparse, maxval, log2_byte):
    """For every TABLE_BITS-bit prefix that starts with a whole code of some value x <= maxval:
    x and the code length (0 where the prefix holds no whole code)."""
    size = 1 << TABLE_BITS
    values = np.zeros(size, np.uint32)
    lengths = np.zeros(size, np.uint8)
    for x in range(maxval + 1):
        code, length = _code(x, k, sparse, log2_byte)
        if length > TABLE_BITS:
            if sparse and x == 0:
                continue
            break  # lengths only grow with x (past seg's one-bit zero)
        first = code << (TABLE_BITS - length)
        for j in range(first, first + (1 << (TABLE_BITS - length))):
            values[j] = x
            lengths[j] = length
    return values, lengths


@njit(cache=True, nogil=True)
def _decode(buf, payload_bits, n, k, sparse, maxval, signed, out, values, lengths):
    """Decode n values into `out` (its final dtype; zigzag undone when signed). Returns the bits
    read, or -1 if the stream is malformed (a read past the end, an overlong code, a value too big)."""
    p, acc, nacc = 0, np.uint64(0), 0
    for i in range(n):
        p, acc, nacc = refill(buf, p, acc, nacc)
        prefix = np.int64(acc >> np.uint64(64 - TABLE_BITS))
        length = lengths[prefix]
        if length:  # the common case: one lookup gives the value and its length
            x = np.int64(values[prefix])
            acc <<= np.uint64(length)
            nacc -= length
        else:  # a code longer than the table: [seg's "1"], z zeros, then the z + k + 1 bits of u + 2^k
            if sparse:
                acc <<= np.uint64(1)
                nacc -= 1
            z = np.int64(leading_zeros(acc))
            if z > 32:
                return -1
            acc <<= np.uint64(z)
            nacc -= z
            p, acc, nacc = refill(buf, p, acc, nacc)
            width = z + k + 1
            x = np.int64(acc >> np.uint64(64 - width)) - (np.int64(1) << k)
            acc <<= np.uint64(width)
            nacc -= width
            if sparse:
                x += 1
            if x > maxval:
                return -1
        out[i] = unzigzag_value(x, signed)
        if 8 * p - nacc > payload_bits:
            return -1
    return 8 * p - nacc


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


class _Golomb(ChunkedCodec):
    sparse: bool

    def __init__(self, bits: int | None = None, k: int | None = None):
        super().__init__(bits)
        if k is not None and not 0 <= k <= MAX_K:
            raise ValueError(f"k must be in 0..{MAX_K}, got {k}")
        self.k = k

    def _params(self):
        return {"bits": self.bits, "k": self.k}

    def _encode(self, a, bits):
        signed = a.dtype.kind == "i"
        totals = _bits_per_k(zigzag_histogram(a, signed, 1 << bits), self.sparse)
        k = int(np.argmin(totals)) if self.k is None else self.k
        out = np.zeros(packed_bytes(int(totals[k])), np.uint8)
        _encode(a, signed, k, self.sparse, out, _LOG2_BYTE)
        return bytes([k]) + out.tobytes()

    def _decode(self, h: Header, payload: bytes):
        if not payload:
            raise CorruptStreamError(f"{self.codec_id}: stream truncated before k")
        k = payload[0]
        if k > MAX_K:
            raise CorruptStreamError(f"{self.codec_id}: k = {k} is out of range")
        maxval = (1 << h.bits) - 1
        values, lengths = _decode_table(k, self.sparse, maxval, _LOG2_BYTE)
        out = np.empty(h.n, h.dtype)
        payload_bits = 8 * (len(payload) - 1)
        used = _decode(padded(payload, 1), payload_bits, h.n, k, self.sparse, maxval, h.signed, out, values,
                       lengths)
        if used < 0 or packed_bytes(used) != len(payload) - 1:
            raise CorruptStreamError(f"{self.codec_id}: malformed or truncated code stream")
        return out


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

"""Exponential-Golomb codes: `eg` (every value) and `seg` (sparse, Georgiadis 2019).

Order-k exp-Golomb of u >= 0: with w = u + 2^k and L = floor(log2 w), write L - k zeros and then
the L + 1 bits of w: 2L - k + 1 bits in all.
- `eg`:  every value (zigzag for signed) costs its order-k exp-Golomb code.
- `seg`: a zero costs one bit "0"; a non-zero x costs a "1" and the order-k code of x - 1.
k (0..16) is chosen per stream to minimise the size unless given; it is one byte of the stream.

The codes are laid out in LANES bit streams: lane j holds the codes of values j*n/4 .. (j+1)*n/4
(integer division), most significant bit first in 64-bit words stored little-endian, and the
stream gives the word count of all lanes but the last (varints). Decoding one variable-length
code waits on the one before it; four lanes give the processor four such chains to work on at
once, which more than doubles decoding speed. The cost is the codes' bits plus the padding of
each lane to a whole word, k and the counts: at most 42 bytes a chunk.

Encoding looks each value's code up in a table. Decoding is table-driven too: the next 12 bits
index a table of (value, length) for every code that short (seg's one-bit zero included), and
only longer codes take the slow path.

>>> import numpy as np
>>> from actzip.codecs import get
>>> c = get("seg", k=0)
>>> s = c.encode(np.array([0, 0, 1, 2], dtype=np.uint8))
>>> c.decode(s).tolist(), len(s) - 4   # header and chunk size; k, 3 lane lengths, 4 one-word lanes
([0, 0, 1, 2], 36)
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import njit
from numba.cpython.unsafe.numbers import leading_zeros

from ..errors import CorruptStreamError
from .base import ChunkedCodec, Header, read_varint, register, write_varint
from .bits import unzigzag_value, window, words_from_payload, write_by_table, zigzag_histogram

MAX_K = 16
LANES = 4
TABLE_BITS = 12
MAX_ZEROS = 16  # L - k <= 16, as u + 2^k < 2^17 for any 16-bit u and k: more zeros is a corrupt stream
_BAD = np.uint64(1) << np.uint64(48)  # added to a lane's position to mark it corrupt


def _shifted(u: np.ndarray, k: int, sparse: bool) -> np.ndarray:
    """w = (the value the exp-Golomb code is of) + 2^k for every value in u (int64): u itself, or
    u - 1 for seg's non-zeros (seg's zeros get 2^k, unused: their code is the one bit "0")."""
    return (np.maximum(u - 1, 0) if sparse else u) + (1 << k)


def _code_lengths(u: np.ndarray, k: int, sparse: bool) -> np.ndarray:
    """Code length in bits of every value in u (int64)."""
    lengths = 2 * np.floor(np.log2(_shifted(u, k, sparse))).astype(np.int64) - k + 1
    return np.where(u == 0, 1, lengths + 1) if sparse else lengths


@lru_cache(maxsize=64)
def _code_table(k: int, sparse: bool, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes, lengths) of every value below 2^bits: the encoder's lookup table."""
    u = np.arange(1 << bits, dtype=np.int64)
    lengths, w = _code_lengths(u, k, sparse), _shifted(u, k, sparse)
    codes = np.where(u == 0, 0, (1 << (lengths - 1)) | w) if sparse else w  # seg: the "1", then w
    return codes.astype(np.uint64), lengths.astype(np.uint8)


@lru_cache(maxsize=64)
def _decode_table(k: int, sparse: bool, maxval: int) -> np.ndarray:
    """For every TABLE_BITS-bit prefix that starts with a whole code of some value x <= maxval:
    x << 5 | the code's length (0 where the prefix holds no whole code)."""
    codes, lengths = _code_table(k, sparse, max(int(maxval).bit_length(), 1))
    table = np.zeros(1 << TABLE_BITS, np.uint32)
    for x in range(maxval + 1):
        length = int(lengths[x])
        if length > TABLE_BITS:
            break  # lengths only grow with x
        first = int(codes[x]) << (TABLE_BITS - length)
        table[first:first + (1 << (TABLE_BITS - length))] = x << 5 | length
    return table


_U1, _U5, _U31, _U64 = np.uint64(1), np.uint64(5), np.uint64(31), np.uint64(64)


@njit(cache=True, inline="always")
def _next(words, pos, k, sparse, maxval, table):
    """(value, position after its code) of the code at bit `pos`; a malformed code (too many
    leading zeros, a value above maxval) moves the position far past the end instead."""
    win = window(words, pos)
    entry = np.uint64(table[win >> np.uint64(64 - TABLE_BITS)])
    length = entry & _U31
    x = entry >> _U5
    if length == 0:  # longer than the table: [seg's "1"], z zeros, then the z + k + 1 bits of u + 2^k
        flag = np.uint64(sparse)
        rest = win << flag
        z = min(np.uint64(leading_zeros(rest)), np.uint64(MAX_ZEROS + 1))
        width = z + k + _U1
        x = ((rest << z) >> (_U64 - width)) - (_U1 << k) + flag
        length = flag + z + width
        if z > MAX_ZEROS or x > maxval:
            length += _BAD
    return x, pos + length


@njit(cache=True, nogil=True)
def _decode_lanes(words, starts, ends, n, k, sparse, maxval, signed, out, table, pos):
    """Decode the first n // LANES values of every lane (lane j from bit starts[j], not past bit
    ends[j]) into `out` (its final dtype), all lanes in step, and leave the lanes' positions in
    `pos`. Returns 0, or -1 as soon as a lane is malformed or overruns its end."""
    k, maxval = np.uint64(k), np.uint64(maxval)
    p0, p1, p2, p3 = np.uint64(starts[0]), np.uint64(starts[1]), np.uint64(starts[2]), np.uint64(starts[3])
    e0, e1, e2, e3 = np.uint64(ends[0]), np.uint64(ends[1]), np.uint64(ends[2]), np.uint64(ends[3])
    # lane j's first value; scalars, not an array: the compiler would reload them after every store
    o1, o2, o3 = np.uint64(n // LANES), np.uint64(2 * n // LANES), np.uint64(3 * n // LANES)
    for i in range(n // LANES):
        i = np.uint64(i)
        x0, p0 = _next(words, p0, k, sparse, maxval, table)
        x1, p1 = _next(words, p1, k, sparse, maxval, table)
        x2, p2 = _next(words, p2, k, sparse, maxval, table)
        x3, p3 = _next(words, p3, k, sparse, maxval, table)
        out[i] = unzigzag_value(np.int64(x0), signed)
        out[o1 + i] = unzigzag_value(np.int64(x1), signed)
        out[o2 + i] = unzigzag_value(np.int64(x2), signed)
        out[o3 + i] = unzigzag_value(np.int64(x3), signed)
        if (p0 > e0) | (p1 > e1) | (p2 > e2) | (p3 > e3):  # checked before the next read
            return -1
    pos[0], pos[1], pos[2], pos[3] = p0, p1, p2, p3
    return 0


@njit(cache=True, nogil=True)
def _finish_lanes(words, pos, ends, n, k, sparse, maxval, signed, out, table):
    """After _decode_lanes: the last value of each longer lane, then 0 if every lane ended in its
    last word, -1 if not. (Apart from _decode_lanes because calls after its loop slow the loop by
    a third.)"""
    k, maxval = np.uint64(k), np.uint64(maxval)
    for j in range(LANES):
        last = (j + 1) * n // LANES
        if last - j * n // LANES > n // LANES:
            x, pos[j] = _next(words, pos[j], k, sparse, maxval, table)
            out[last - 1] = unzigzag_value(np.int64(x), signed)
        if pos[j] > np.uint64(ends[j]) or pos[j] + np.uint64(64) <= np.uint64(ends[j]):
            return -1  # past the lane's end, or short of its last word
    return 0


def _bits_per_k(counts: np.ndarray, sparse: bool) -> np.ndarray:
    """Total payload bits for each k in 0..MAX_K, from the histogram of values. The code length
    of u is constant over u + 2^k in [2^L, 2^(L+1)), so each k sums a few ranges of the
    cumulative histogram."""
    c = counts[1:] if sparse else counts  # seg codes x - 1 of every non-zero x
    cum = np.concatenate(([0], np.cumsum(c)))
    totals = np.full(MAX_K + 1, counts.sum() if sparse else 0, np.int64)  # seg: a bit per value
    for k in range(MAX_K + 1):
        for length in range(k, 64):
            lo = (1 << length) - (1 << k)
            if lo >= c.size:
                break
            hi = min((2 << length) - (1 << k), c.size)
            totals[k] += int(cum[hi] - cum[lo]) * (2 * length - k + 1)
    return totals


class _Golomb(ChunkedCodec):
    """The exp-Golomb codecs' shared parameters and coding (see ExpGolomb and SparseExpGolomb).

    Parameters:
        bits: the values' bit width (None: taken from each input).
        k: the order of the exp-Golomb code, 0..MAX_K (None: the cheapest, chosen per stream).
    """

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
        counts = zigzag_histogram(a, signed, 1 << bits)
        k = int(np.argmin(_bits_per_k(counts, self.sparse))) if self.k is None else self.k
        codes, lengths = _code_table(k, self.sparse, bits)
        longest = int(lengths[np.nonzero(counts)[0]].max())
        lanes = []
        for j in range(LANES):
            lane = a[j * a.size // LANES:(j + 1) * a.size // LANES]
            words = np.zeros(lane.size * longest // 64 + 1, np.uint64)
            n_bits = write_by_table(lane, signed, codes, lengths, words)
            lanes.append(words[:-(-n_bits // 64)])
        return (bytes([k]) + b"".join(write_varint(w.size) for w in lanes[:-1])
                + np.concatenate(lanes).astype("<u8").tobytes())

    def _decode(self, h: Header, payload: memoryview):
        out = np.empty(h.n, h.dtype)
        self._decode_into(h, payload, out)
        return out

    def _decode_into(self, h: Header, payload: memoryview, out: np.ndarray) -> None:
        if not payload:
            raise CorruptStreamError(f"{self.codec_id}: stream truncated before k")
        k = payload[0]
        if k > MAX_K:
            raise CorruptStreamError(f"{self.codec_id}: k = {k} is out of range")
        sizes, pos = [], 1
        for _ in range(LANES - 1):
            size, pos = read_varint(payload, pos, "lane length")
            sizes.append(size)
        rest = len(payload) - pos - 8 * sum(sizes)
        if rest < 0 or rest % 8:
            raise CorruptStreamError(f"{self.codec_id}: lane lengths do not match the stream's")
        sizes.append(rest // 8)
        ends = 64 * np.cumsum(sizes)
        maxval = (1 << h.bits) - 1
        words = words_from_payload(payload, pos, int(ends[-1]) // 64)
        table = _decode_table(k, self.sparse, maxval)
        lanes = np.zeros(LANES, np.uint64)
        args = (h.n, k, self.sparse, maxval, h.signed, out, table)
        if (_decode_lanes(words, ends - 64 * np.array(sizes), ends, *args, lanes) < 0
                or _finish_lanes(words, lanes, ends, *args) < 0):
            raise CorruptStreamError(f"{self.codec_id}: malformed or truncated code stream")


@register
class ExpGolomb(_Golomb):
    """Order-k exp-Golomb of every value, k chosen per stream.

    Parameters:
        bits: the values' bit width (None: taken from each input).
        k: the order, 0..MAX_K (None: chosen per stream).
    """

    codec_id = "eg"
    sparse = False
    values_per_bit = 1.0


@register
class SparseExpGolomb(_Golomb):
    """Sparse exp-Golomb: a zero is 1 bit, a non-zero x is 1 bit + exp-Golomb(x - 1).

    Parameters:
        bits: the values' bit width (None: taken from each input).
        k: the order of the code of x - 1, 0..MAX_K (None: chosen per stream).
    """

    codec_id = "seg"
    sparse = True
    values_per_bit = 1.0

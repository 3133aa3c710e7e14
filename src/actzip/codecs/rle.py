"""`rle`: zero run-length coding. The values become tokens (z, v): z zeros, then the value v, each
token on r + b bits. Runs longer than 2^r - 1 are split by tokens whose v is 0 (they stand for
2^r zeros); a stream that ends in zeros ends with such a token of a shorter run. r (0..16) is
chosen per stream to minimise the size. Cost: T * (r + b) bits for T tokens, plus a byte for r and
a varint for T.

>>> import numpy as np
>>> from actzip.codecs import get
>>> c = get("rle")
>>> c.decode(c.encode(np.array([0, 0, 0, 9, 0, 0], dtype=np.uint8))).tolist()
[0, 0, 0, 9, 0, 0]
"""

from __future__ import annotations

import sys

import numpy as np
from numba import njit

from ..errors import CorruptStreamError
from .base import ChunkedCodec, Header, read_varint, register, write_varint
from .bits import packed_bytes, padded, refill, scratch, unzigzag_value, zigzag_value

MAX_RUN_BITS = 16
_32 = np.uint64(32)
_LITTLE_ENDIAN = sys.byteorder == "little"


@njit(cache=True, nogil=True)
def _runs(a, signed, runs, values):
    """The first pass: for the t-th non-zero, the zeros before it (runs[t]) and its zigzag value
    (values[t]). Returns the number of non-zeros and of the zeros after the last one.

    Nothing branches on the data (zeros come at random) and nothing chains from one value to
    the next but a count and a select: every value stores into the next slots and moves on only
    if it is a non-zero, and the run is measured from the last non-zero's position."""
    last, t = -1, 0
    for i in range(a.shape[0]):
        v = zigzag_value(a[i], signed)
        nonzero = v != 0
        runs[t] = i - last - 1
        values[t] = v
        t += nonzero
        last = i if nonzero else last
    return t, a.shape[0] - 1 - last


@njit(cache=True, nogil=True)
def _token_counts(runs, trailing):
    """Tokens needed for every run field width r in 0..MAX_RUN_BITS: a run of L zeros before a
    value takes L >> r + 1 tokens, the trailing run ceil(L / 2^r). One plain sum per r, which
    the compiler vectorizes (a histogram of runs costs more: an increment waits on the last)."""
    counts = np.zeros(MAX_RUN_BITS + 1, np.int64)
    for r in range(MAX_RUN_BITS + 1):
        total = 0
        for t in range(runs.shape[0]):
            total += runs[t] >> r
        counts[r] = runs.shape[0] + total + ((trailing + (1 << r) - 1) >> r)
    return counts


@njit(cache=True, inline="always")
def _big_endian(w):
    """The low 32 bits of w as the uint32 whose bytes in memory are them most significant first
    (a byte swap on little-endian machines; the compiler emits one instruction)."""
    w = np.uint32(w & np.uint64(0xFFFFFFFF))
    if _LITTLE_ENDIAN:
        return (w >> np.uint32(24)) | ((w >> np.uint32(8)) & np.uint32(0xFF00)) | \
            ((w << np.uint32(8)) & np.uint32(0xFF0000)) | (w << np.uint32(24))
    return w


@njit(cache=True, nogil=True)
def _place_tokens(runs, values, trailing, r, bits, tokens):
    """The tokens (z << bits | v) into `tokens`, which comes filled with full-span tokens
    (2^r - 1, 0): a run of L zeros before v is L >> r of those, then (L % 2^r, v); a trailing run
    is L - 1 zeros before a value 0. Each token goes to its place (a running sum), so no branch
    depends on how long the runs are."""
    mask = (1 << r) - 1
    pos = -1
    for t in range(runs.shape[0]):
        pos += (runs[t] >> r) + 1
        tokens[pos] = ((runs[t] & mask) << bits) | values[t]
    if trailing:
        pos += ((trailing - 1) >> r) + 1
        tokens[pos] = ((trailing - 1) & mask) << bits


@njit(cache=True, nogil=True)
def _pack(tokens, width, out):
    """The tokens on `width` bits each into `out`, uint32 words whose bytes are stored big-endian,
    so that the stream is the bits most significant first. With one width for all, when a word
    fills up follows a pattern the branch predictor learns."""
    width = np.uint64(width)
    acc, nacc, o = np.uint64(0), np.uint64(0), 0
    for t in range(tokens.shape[0]):
        acc = (acc << width) | np.uint64(tokens[t])
        nacc += width
        if nacc >= _32:
            nacc -= _32
            out[o] = _big_endian(acc >> nacc)
            o += 1
    if nacc:
        out[o] = _big_endian(acc << (_32 - nacc))



@njit(cache=True, nogil=True)
def _decode(buf, total, r, bits, signed, out):
    """Expand `total` tokens into the zeroed `out`; -1 if they do not make exactly out.size values."""
    n = out.shape[0]
    width = r + bits
    mask = (1 << bits) - 1
    p, acc, nacc = 0, np.uint64(0), 0
    pos = 0
    for _ in range(total):
        p, acc, nacc = refill(buf, p, acc, nacc)
        token = np.int64(acc >> np.uint64(64 - width))
        acc <<= np.uint64(width)
        nacc -= width
        pos += token >> bits
        if pos >= n:
            return -1
        out[pos] = unzigzag_value(token & mask, signed)
        pos += 1
    return 0 if pos == n else -1


@register
class RLE(ChunkedCodec):
    """Zero run-lengths: (run, value) tokens on r + b bits, r chosen per stream.

    Parameters:
        bits: the values' bit width (None: taken from each input).
        run_bits: r, the bits of a run length, 0..MAX_RUN_BITS (None: chosen per stream).
    """

    codec_id = "rle"
    values_per_bit = float(1 << MAX_RUN_BITS) / (MAX_RUN_BITS + 1)

    def __init__(self, bits: int | None = None, run_bits: int | None = None):
        super().__init__(bits)
        if run_bits is not None and not 0 <= run_bits <= MAX_RUN_BITS:
            raise ValueError(f"run_bits must be in 0..{MAX_RUN_BITS}, got {run_bits}")
        self.run_bits = run_bits

    def _params(self):
        return {"bits": self.bits, "run_bits": self.run_bits}

    def _encode(self, a, bits):
        runs, values = scratch("rle runs", a.size, np.int32), scratch("rle values", a.size, np.uint16)
        n_nonzero, trailing = _runs(a, a.dtype.kind == "i", runs, values)
        runs, values = runs[:n_nonzero], values[:n_nonzero]
        counts = _token_counts(runs, trailing)
        choices = [self.run_bits] if self.run_bits is not None else range(MAX_RUN_BITS + 1)
        r = min(choices, key=lambda r: int(counts[r]) * (r + bits))
        total = int(counts[r])
        tokens = scratch("rle tokens", total, np.uint32)
        tokens.fill(((1 << r) - 1) << bits)
        _place_tokens(runs, values, trailing, r, bits, tokens)
        # the payload is built in place, r and T (at most 4 bytes: T <= CHUNK < 2^21) just before
        # the 4-byte aligned words: one copy fewer than joining them to the words afterwards
        head = bytes([r]) + write_varint(total)
        out = np.empty(4 + 4 * (total * (r + bits) // 32 + 1), np.uint8)
        out[4 - len(head):4] = np.frombuffer(head, np.uint8)
        _pack(tokens, r + bits, out[4:].view(np.uint32))
        return out[4 - len(head):4 + packed_bytes(total * (r + bits))]

    def _decode(self, h: Header, payload: bytes):
        if not payload:
            raise CorruptStreamError("rle: stream truncated before its parameters")
        r = payload[0]
        if r > MAX_RUN_BITS:
            raise CorruptStreamError(f"rle: run field of {r} bits")
        total, pos = read_varint(payload, 1, "token count")
        width = r + h.bits
        if packed_bytes(total * width) != len(payload) - pos:
            raise CorruptStreamError(f"rle: {total} tokens of {width} bits do not match {len(payload) - pos} bytes")
        if h.n > total << r:
            raise CorruptStreamError(f"rle: {total} tokens cannot make {h.n} values")
        out = np.zeros(h.n, h.dtype)
        if _decode(padded(payload, pos), total, r, h.bits, h.signed, out) < 0:
            raise CorruptStreamError("rle: the tokens do not add up to the stated number of values")
        return out

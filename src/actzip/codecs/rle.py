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

import numpy as np
from numba import njit

from ..errors import CorruptStreamError
from .base import ChunkedCodec, Header, read_varint, register, write_varint
from .bits import packed_bytes, padded, refill, unzigzag_value, zigzag_value

MAX_RUN_BITS = 16


SHORT_RUNS = 4096


@njit(cache=True, nogil=True)
def _token_counts(a):
    """Tokens needed for every run field width r in 0..MAX_RUN_BITS: a run of L zeros before a
    value takes L >> r + 1 tokens, the trailing run ceil(L / 2^r). Short runs go through a
    histogram (one increment each, branch-free: zeros come at random); the rare long ones are
    counted for every r directly."""
    counts = np.zeros(MAX_RUN_BITS + 1, np.int64)
    short = np.zeros(SHORT_RUNS, np.int64)
    run = longest = 0
    for i in range(a.shape[0]):
        nonzero = np.int64(a[i] != 0)
        if run >= SHORT_RUNS and nonzero:
            for r in range(MAX_RUN_BITS + 1):
                counts[r] += (run >> r) + 1
        else:
            short[min(run, SHORT_RUNS - 1)] += nonzero
            longest = max(longest, run)
        run = (run + 1) * (1 - nonzero)
    for r in range(MAX_RUN_BITS + 1):
        for length in range(min(longest + 1, SHORT_RUNS)):
            counts[r] += short[length] * ((length >> r) + 1)
        if run:
            counts[r] += (run + (1 << r) - 1) >> r
    return counts


_32, _BYTE = np.uint64(32), np.uint64(0xFF)


@njit(cache=True, nogil=True)
def _encode(a, signed, r, bits, out):
    """Tokens (z << bits | v) on r + bits bits: a run of L zeros before v is L >> r tokens
    (2^r - 1, 0) then (L % 2^r, v); a trailing run is tokens (2^r - 1, 0) and a last (rest - 1, 0).

    A full-span token leaves as soon as its run is complete, so every value appends at most one
    token, and whether it does is arithmetic, not a branch (zeros come at random: mispredicted
    branches were most of the time). Bits leave the accumulator 32 at a time."""
    span = 1 << r
    width = np.uint64(r + bits)
    full = np.uint64((span - 1) << bits)
    acc, nacc, o = np.uint64(0), np.uint64(0), 0
    run = 0
    for i in range(a.shape[0]):
        v = zigzag_value(a[i], signed)
        nonzero = v != 0
        complete = not nonzero and run + 1 == span
        token = np.uint64((run << bits) | v) if nonzero else full
        emit = np.uint64(nonzero or complete)
        acc = (acc << (width * emit)) | (token & (np.uint64(0) - emit))
        nacc += width * emit
        run = 0 if nonzero or complete else run + 1
        if nacc >= _32:
            nacc -= _32
            w = acc >> nacc
            out[o] = np.uint8((w >> np.uint64(24)) & _BYTE)
            out[o + 1] = np.uint8((w >> np.uint64(16)) & _BYTE)
            out[o + 2] = np.uint8((w >> np.uint64(8)) & _BYTE)
            out[o + 3] = np.uint8(w & _BYTE)
            o += 4
    if run:  # the trailing run's last token
        acc = (acc << width) | np.uint64((run - 1) << bits)
        nacc += width
    while nacc >= np.uint64(8):
        nacc -= np.uint64(8)
        out[o] = np.uint8((acc >> nacc) & _BYTE)
        o += 1
    if nacc:
        out[o] = np.uint8((acc << (np.uint64(8) - nacc)) & _BYTE)


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
    """Zero run-lengths: (run, value) tokens on r + b bits, r chosen per stream."""

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
        counts = _token_counts(a)
        choices = [self.run_bits] if self.run_bits is not None else range(MAX_RUN_BITS + 1)
        r = min(choices, key=lambda r: int(counts[r]) * (r + bits))
        total = int(counts[r])
        out = np.zeros(packed_bytes(total * (r + bits)), np.uint8)
        _encode(a, a.dtype.kind == "i", r, bits, out)
        return bytes([r]) + write_varint(total) + out.tobytes()

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

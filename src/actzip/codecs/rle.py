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
    histogram (one increment each); the rare long ones are counted for every r directly."""
    counts = np.zeros(MAX_RUN_BITS + 1, np.int64)
    short = np.zeros(SHORT_RUNS, np.int64)
    run = 0
    for i in range(a.shape[0]):
        if a[i] == 0:
            run += 1
        else:
            if run < SHORT_RUNS:
                short[run] += 1
            else:
                for r in range(MAX_RUN_BITS + 1):
                    counts[r] += (run >> r) + 1
            run = 0
    for r in range(MAX_RUN_BITS + 1):
        for length in range(SHORT_RUNS):
            counts[r] += short[length] * ((length >> r) + 1)
        if run:
            counts[r] += (run + (1 << r) - 1) >> r
    return counts


@njit(cache=True, nogil=True)
def _encode(a, signed, r, bits, out):
    """Tokens (z << bits | v) on r + bits bits: a run of L zeros before v is L >> r tokens
    (2^r - 1, 0) then (L % 2^r, v); a trailing run is tokens (2^r - 1, 0) and a last (rest - 1, 0)."""
    span = 1 << r
    width = r + bits
    acc = np.uint64(0)
    nacc = 0
    o = 0
    run = 0
    n = a.shape[0]
    i = 0
    while i <= n:
        if i < n and a[i] == 0:
            run += 1
            i += 1
            continue
        if i == n and run == 0:
            break
        while run >= span or (i == n and run > 0):
            step = min(run, span)
            token = (step - 1) << bits
            run -= step
            acc = (acc << np.uint64(width)) | np.uint64(token)
            nacc += width
            while nacc >= 8:
                nacc -= 8
                out[o] = np.uint8((acc >> np.uint64(nacc)) & np.uint64(0xFF))
                o += 1
        if i == n:
            break
        token = (run << bits) | zigzag_value(a[i], signed)
        acc = (acc << np.uint64(width)) | np.uint64(token)
        nacc += width
        while nacc >= 8:
            nacc -= 8
            out[o] = np.uint8((acc >> np.uint64(nacc)) & np.uint64(0xFF))
            o += 1
        run = 0
        i += 1
    if nacc:
        out[o] = np.uint8((acc << np.uint64(8 - nacc)) & np.uint64(0xFF))


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

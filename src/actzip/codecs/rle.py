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
import threading

import numpy as np
from numba import njit

from ..errors import CorruptStreamError
from .base import ChunkedCodec, Header, read_varint, register, write_varint
from .bits import packed_bytes, padded, refill, unzigzag_value, zigzag_value

MAX_RUN_BITS = 16


SHORT_RUNS = 1024


@njit(cache=True, nogil=True)
def _runs(a, signed, runs, values, short):
    """The first pass: for the t-th non-zero, the zeros before it (runs[t]) and its zigzag value
    (values[t]); a histogram of the runs in `short` (4 x SHORT_RUNS + 1, zeroed), whose last bin
    counts all longer runs. Returns the number of non-zeros and of the zeros after the last one.

    Nothing branches on the data (zeros come at random) and nothing chains from one value to
    the next but selects and a count: every value stores into the next slot and moves on only
    if it is a non-zero, the run is measured from the last non-zero's position, and the
    histogram is four interleaved ones (back-to-back values all count a run of 0, and one
    counter would make each wait on the last)."""
    last, t = -1, 0
    for i in range(a.shape[0]):
        v = zigzag_value(a[i], signed)
        nonzero = v != 0
        run = i - last - 1
        runs[t] = run
        values[t] = v
        short[i & 3, min(run, SHORT_RUNS)] += nonzero
        t += nonzero
        last = i if nonzero else last
    return t, a.shape[0] - 1 - last


@njit(cache=True, nogil=True)
def _token_counts(runs, short, trailing):
    """Tokens needed for every run field width r in 0..MAX_RUN_BITS: a run of L zeros before a
    value takes L >> r + 1 tokens, the trailing run ceil(L / 2^r). The histogram gives the short
    runs; the long ones, if any, are looked up in `runs`."""
    hist = short.sum(axis=0)
    counts = np.zeros(MAX_RUN_BITS + 1, np.int64)
    for r in range(MAX_RUN_BITS + 1):
        for length in range(SHORT_RUNS):
            counts[r] += hist[length] * ((length >> r) + 1)
        counts[r] += (trailing + (1 << r) - 1) >> r
    if hist[SHORT_RUNS]:
        for run in runs:
            if run >= SHORT_RUNS:
                for r in range(MAX_RUN_BITS + 1):
                    counts[r] += (run >> r) + 1
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
def _pack(runs, values, trailing, r, bits, out):
    """The second pass: the tokens (z << bits | v) on r + bits bits into `out` (uint32 words whose
    bytes are stored big-endian, so that the stream is the bits most significant first). A run of L zeros before v is L >> r tokens (2^r - 1, 0) then
    (L % 2^r, v); a trailing run is tokens (2^r - 1, 0) and a last (rest - 1, 0). Every token has
    the same width, so when a word fills up follows a pattern the branch predictor learns."""
    span = 1 << r
    width = np.uint64(r + bits)
    full = np.uint64((span - 1) << bits)
    acc, nacc, o = np.uint64(0), np.uint64(0), 0
    for t in range(runs.shape[0] + (trailing > 0)):
        if t < runs.shape[0]:
            run, token = runs[t], np.uint64(values[t])
        else:  # the trailing run ends in a token of value 0
            run, token = trailing - 1, np.uint64(0)
        for _ in range(run >> r):  # runs of a full span or more (rare once r is chosen)
            acc = (acc << width) | full
            nacc += width
            if nacc >= _32:
                nacc -= _32
                out[o] = _big_endian(acc >> nacc)
                o += 1
        acc = (acc << width) | (np.uint64(run & (span - 1)) << np.uint64(bits)) | token
        nacc += width
        if nacc >= _32:
            nacc -= _32
            out[o] = _big_endian(acc >> nacc)
            o += 1
    if nacc:
        out[o] = _big_endian(acc << (_32 - nacc))


_32 = np.uint64(32)
_LITTLE_ENDIAN = sys.byteorder == "little"
_SCRATCH = threading.local()


def _scratch(n: int) -> tuple[np.ndarray, np.ndarray]:
    """This thread's (runs, values) buffers for a chunk of n values, reused from chunk to chunk: a
    fresh buffer costs a page fault per 4 KiB, as much as the pass that fills it."""
    if getattr(_SCRATCH, "runs", None) is None or _SCRATCH.runs.size < n + 1:
        _SCRATCH.runs, _SCRATCH.values = np.empty(n + 1, np.int32), np.empty(n + 1, np.uint32)
    return _SCRATCH.runs, _SCRATCH.values


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
        runs, values = _scratch(a.size)
        short = np.zeros((4, SHORT_RUNS + 1), np.int64)
        n_nonzero, trailing = _runs(a, a.dtype.kind == "i", runs, values, short)
        runs, values = runs[:n_nonzero], values[:n_nonzero]
        counts = _token_counts(runs, short, trailing)
        choices = [self.run_bits] if self.run_bits is not None else range(MAX_RUN_BITS + 1)
        r = min(choices, key=lambda r: int(counts[r]) * (r + bits))
        total = int(counts[r])
        words = np.zeros(total * (r + bits) // 32 + 2, np.uint32)
        _pack(runs, values, trailing, r, bits, words)
        return b"".join((bytes([r]), write_varint(total), words.view(np.uint8)[:packed_bytes(total * (r + bits))]))

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

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
from .base import Codec, Header, read_varint, register, unzigzag, write_varint, zigzag
from .bits import pack_fixed, packed_bytes, padded, unpack_fixed

MAX_RUN_BITS = 16


@njit(cache=True)
def _zero_runs(u):
    """Lengths of the zero runs before each non-zero value, and of the trailing run (last entry)."""
    runs = np.empty(u.shape[0] + 1, np.int64)
    count = 0
    run = 0
    for i in range(u.shape[0]):
        if u[i] == 0:
            run += 1
        else:
            runs[count] = run
            count += 1
            run = 0
    runs[count] = run
    return runs[: count + 1]


def _token_count(runs: np.ndarray, r: int) -> int:
    """Tokens needed with r-bit run fields (see _tokens for the rule)."""
    span = 1 << r
    head, tail = runs[:-1], int(runs[-1])
    return int((head // span).sum()) + head.size + (tail + span - 1) // span


@njit(cache=True)
def _tokens(u, r, bits, total):
    """The (z << bits | v) tokens: a run of L zeros before v takes L // 2^r tokens (2^r - 1, 0)
    and then (L % 2^r, v); the trailing run of L zeros takes ceil(L / 2^r) tokens, the last one
    (rest - 1, 0)."""
    span = 1 << r
    out = np.empty(total, np.uint32)
    t = 0
    run = 0
    for i in range(u.shape[0]):
        if u[i] == 0:
            run += 1
            continue
        while run >= span:
            out[t] = (span - 1) << bits
            t += 1
            run -= span
        out[t] = (run << bits) | u[i]
        t += 1
        run = 0
    while run > 0:
        step = min(run, span)
        out[t] = (step - 1) << bits
        t += 1
        run -= step
    return out


@njit(cache=True)
def _expand(tokens, n, bits, out):
    """Inverse of _tokens into the zeroed `out`; returns -1 if the tokens do not make exactly n values."""
    mask = (1 << bits) - 1
    pos = 0
    for t in range(tokens.shape[0]):
        z = np.int64(tokens[t] >> bits)
        v = tokens[t] & mask
        pos += z
        if pos >= n:
            return -1
        out[pos] = v
        pos += 1
    return 0 if pos == n else -1


@register
class RLE(Codec):
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
        u = zigzag(a)
        runs = _zero_runs(u)
        choices = [self.run_bits] if self.run_bits is not None else range(MAX_RUN_BITS + 1)
        r = min(choices, key=lambda r: _token_count(runs, r) * (r + bits))
        total = _token_count(runs, r)
        tokens = _tokens(u, r, bits, total)
        out = np.zeros(packed_bytes(total * (r + bits)), np.uint8)
        pack_fixed(tokens, r + bits, out)
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
        tokens = np.empty(total, np.uint32)
        unpack_fixed(padded(payload, pos), total, width, tokens)
        u = np.zeros(h.n, np.uint32)
        if _expand(tokens, h.n, h.bits, u) < 0:
            raise CorruptStreamError("rle: the tokens do not add up to the stated number of values")
        return unzigzag(u, h.dtype)

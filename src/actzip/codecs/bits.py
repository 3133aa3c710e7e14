"""Bit-level kernels shared by the codecs (numba). Bits are written most significant first.

Readers get the payload padded with PAD zero bytes, so a 64-bit window can always be loaded; each
decoder checks, after every symbol, that it has not read past the real end, and reports overruns
through its return value rather than an exception (numba kernels stay exception-free and fast).

The fast reader keeps up to 64 bits in `acc`, most significant first, `nacc` of them valid:
`refill` tops it up byte by byte, the next n bits are `acc >> (64 - n)`, and the bits consumed so
far are `8 * p - nacc`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

PAD = 16  # refill may read 8 bytes past a position that is itself up to 8 bytes past the end


def padded(payload: bytes, start: int = 0) -> np.ndarray:
    """payload[start:] as uint8 with PAD zero bytes after it."""
    out = np.zeros(len(payload) - start + PAD, dtype=np.uint8)
    out[: len(payload) - start] = np.frombuffer(payload, dtype=np.uint8, offset=start)
    return out


@njit(cache=True, inline="always")
def peek(buf, pos, n):
    """The n (1..56) bits starting at bit `pos`, as an integer."""
    byte = pos >> 3
    w = np.uint64(0)
    for j in range(8):
        w = (w << np.uint64(8)) | np.uint64(buf[byte + j])
    w = w << np.uint64(pos & 7)
    return np.int64(w >> np.uint64(64 - n))


@njit(cache=True, inline="always")
def refill(buf, p, acc, nacc):
    """Top the reader up to at least 57 valid bits; returns the new (p, acc, nacc)."""
    while nacc <= 56:
        acc |= np.uint64(buf[p]) << np.uint64(56 - nacc)
        p += 1
        nacc += 8
    return p, acc, nacc


@njit(cache=True, inline="always")
def zigzag_value(v, signed):
    """One value as the unsigned integer the codes work on (zigzag when signed)."""
    if signed:
        w = np.int64(v)
        return np.int64((w << 1) ^ (w >> 63))
    return np.int64(v)


@njit(cache=True, inline="always")
def unzigzag_value(u, signed):
    """Inverse of zigzag_value."""
    if signed:
        return (u >> 1) ^ -(u & 1)
    return u


@njit(cache=True, nogil=True)
def zigzag_histogram(a, signed, size):
    """Counts of the zigzag values of `a` (all below `size`)."""
    counts = np.zeros(size, np.int64)
    for i in range(a.shape[0]):
        counts[zigzag_value(a[i], signed)] += 1
    return counts


@njit(cache=True, nogil=True)
def write_codes(codes, lengths, out):
    """Write codes[i] on lengths[i] (0..56) bits each into the zeroed buffer `out`; returns bits written."""
    acc = np.uint64(0)
    nacc = 0
    o = 0
    for i in range(codes.shape[0]):
        length = lengths[i]
        if length == 0:
            continue
        acc = (acc << np.uint64(length)) | (np.uint64(codes[i]) & ((np.uint64(1) << np.uint64(length)) - np.uint64(1)))
        nacc += length
        while nacc >= 8:
            nacc -= 8
            out[o] = np.uint8((acc >> np.uint64(nacc)) & np.uint64(0xFF))
            o += 1
    if nacc:
        out[o] = np.uint8((acc << np.uint64(8 - nacc)) & np.uint64(0xFF))
    return o * 8 + nacc


@njit(cache=True, nogil=True)
def pack_fixed(values, width, out):
    """Pack uint32 values on `width` (1..32) bits each into the zeroed buffer `out`."""
    acc = np.uint64(0)
    nacc = 0
    o = 0
    mask = (np.uint64(1) << np.uint64(width)) - np.uint64(1)
    for i in range(values.shape[0]):
        acc = (acc << np.uint64(width)) | (np.uint64(values[i]) & mask)
        nacc += width
        while nacc >= 8:
            nacc -= 8
            out[o] = np.uint8((acc >> np.uint64(nacc)) & np.uint64(0xFF))
            o += 1
    if nacc:
        out[o] = np.uint8((acc << np.uint64(8 - nacc)) & np.uint64(0xFF))


@njit(cache=True, nogil=True)
def unpack_fixed(buf, n, width, out):
    """Inverse of pack_fixed: n values of `width` bits from the padded buffer into uint32 `out`."""
    pos = 0
    for i in range(n):
        out[i] = peek(buf, pos, width)
        pos += width


def packed_bytes(n_bits: int) -> int:
    return (n_bits + 7) // 8

"""Bit-level kernels shared by the codecs (numba). Bits are written most significant first.

Readers get the payload padded with PAD zero bytes, so a 64-bit window can always be loaded; each
decoder checks, after every symbol, that it has not read past the real end, and reports overruns
through its return value rather than an exception (numba kernels stay exception-free and fast).

The fast reader keeps up to 64 bits in `acc`, most significant first, `nacc` of them valid:
`refill` tops it up byte by byte, the next n bits are `acc >> (64 - n)`, and the bits consumed so
far are `8 * p - nacc`.

The lane coders (`seg`, `eg`) use a word-wise form of the same bit order: a writer that fills
64-bit words most significant bit first (`write_by_table`), stored as little-endian words so that
a reader loads them without a byte swap, and a reader that takes the 64 bits at any position from
two such words (`window`). Positions are unsigned so that indexing needs no negative-index
wrap-around, which the decoding loops cannot afford.
"""

from __future__ import annotations

import threading

import numpy as np
from numba import njit

from ..errors import CorruptStreamError

PAD = 16  # refill may read 8 bytes past a position that is itself up to 8 bytes past the end
DIRECT_BITS = 11  # huffman's and rans's alphabets: values below 2^11 are their own symbol, larger ones escape


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
    """Counts of the zigzag values of `a` (all below `size`). Four interleaved histograms: runs of
    one value (zeros, mostly) would otherwise wait on the previous increment of the same count."""
    counts = np.zeros((4, size), np.int64)
    n4 = a.shape[0] // 4 * 4
    for i in range(0, n4, 4):
        counts[0, zigzag_value(a[i], signed)] += 1
        counts[1, zigzag_value(a[i + 1], signed)] += 1
        counts[2, zigzag_value(a[i + 2], signed)] += 1
        counts[3, zigzag_value(a[i + 3], signed)] += 1
    for i in range(n4, a.shape[0]):
        counts[0, zigzag_value(a[i], signed)] += 1
    return counts.sum(axis=0)


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


_U1, _U6, _U63, _U64 = np.uint64(1), np.uint64(6), np.uint64(63), np.uint64(64)


@njit(cache=True, nogil=True)
def write_by_table(a, signed, codes, lengths, words):
    """Write the code of every value of `a` (zigzag when signed), codes[u] on lengths[u] (1..63)
    bits, into the zeroed uint64 `words`, most significant bit first; returns the bits written.
    A word is stored only when it is full, so a value costs a lookup, a shift and an or."""
    acc, nacc, o = np.uint64(0), np.uint64(0), 0
    for i in range(a.shape[0]):
        u = zigzag_value(a[i], signed)
        code, length = codes[u], np.uint64(lengths[u])
        free = _U64 - nacc
        if length < free:
            acc = (acc << length) | code
            nacc += length
        else:  # the word fills up: its last `free` bits are the code's first
            spill = length - free
            words[o] = (acc << free) | (code >> spill)  # 1 <= free <= 63 here
            o += 1
            acc, nacc = code, spill  # bits above the spill are shifted out later
    if nacc:
        words[o] = acc << (_U64 - nacc)
    return o * 64 + np.int64(nacc)


_SCRATCH = threading.local()


def scratch(name: str, size: int, dtype) -> np.ndarray:
    """A buffer of `size` items of this thread's, reused by its next call with the same name (the
    caller must be done with it by then). A fresh buffer would cost a page fault per 4 KiB, as
    much time as a pass over the data."""
    buf = getattr(_SCRATCH, name, None)
    if buf is None or buf.size < size or buf.dtype != dtype:
        buf = np.empty(max(size, 1 << 16), dtype)
        setattr(_SCRATCH, name, buf)
    return buf[:size]


def words_from_payload(payload, start: int, n_words: int) -> np.ndarray:
    """n_words little-endian 64-bit words from payload[start:], as native uint64 with two zero
    words after them, so that `window` may read at any position up to their end (in a scratch
    buffer)."""
    words = scratch("words", n_words + 2, np.uint64)
    words[:n_words] = np.frombuffer(payload, "<u8", n_words, start)
    words[n_words:] = 0
    return words


@njit(cache=True, inline="always")
def window(words, pos):
    """The 64 bits from bit `pos` (uint64) on."""
    i, shift = pos >> _U6, pos & _U63
    return (words[i] << shift) | ((words[i + _U1] >> _U1) >> (_U63 - shift))


def packed_bytes(n_bits: int) -> int:
    return (n_bits + 7) // 8


@njit(cache=True, inline="always")
def bit_length(u):
    """Significant bits of an unsigned integer (0 for 0)."""
    m = 0
    while u:
        m += 1
        u >>= 1
    return m


@njit(cache=True, nogil=True)
def escape_symbol_counts(u, direct, n_symbols):
    """Histogram of the escape alphabet of huffman and rans (u < 2^direct is its own symbol, a larger
    u with m bits is symbol 2^direct + m - direct - 1) and the total number of escape bits."""
    counts = np.zeros(n_symbols, np.int64)
    extra = 0
    limit = 1 << direct
    for i in range(u.shape[0]):
        x = u[i]
        if x < limit:
            counts[x] += 1
        else:
            m = bit_length(x)
            counts[limit + m - direct - 1] += 1
            extra += m - 1
    return counts, extra


def pack_values(u: np.ndarray, bits: int) -> bytes:
    """uint32 values on `bits` bits each, MSB first (byte-aligned widths take a numpy fast path)."""
    if bits == 8:
        return u.astype(np.uint8).tobytes()
    if bits == 16:
        return u.astype(">u2").tobytes()
    out = np.zeros(packed_bytes(u.size * bits), dtype=np.uint8)
    pack_fixed(u, bits, out)
    return out.tobytes()


def unpack_values(payload: bytes, start: int, n: int, bits: int, what: str) -> np.ndarray:
    """Inverse of pack_values from payload[start:], which must hold exactly the n values."""
    size = packed_bytes(n * bits)
    if len(payload) - start != size:
        raise CorruptStreamError(f"{what}: {n} values of {bits} bits take {size} bytes, stream has {len(payload) - start}")
    if bits == 8:
        return np.frombuffer(payload, dtype=np.uint8, count=n, offset=start).astype(np.uint32)
    if bits == 16:
        return np.frombuffer(payload, dtype=">u2", count=n, offset=start).astype(np.uint32)
    out = np.empty(n, dtype=np.uint32)
    unpack_fixed(padded(payload, start), n, bits, out)
    return out

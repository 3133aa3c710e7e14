"""Static rANS with one frequency table per context: the table format and the coding steps (numba).

A model is a (contexts, symbols) table of frequencies; every used row sums to M = 2^PROB_BITS, an
unused row is all zero. The coder state lives in [2^15, 2^31) and moves 16 bits at a time, so
each symbol costs at most one renormalisation; encoding divides by a reciprocal multiply (ryg's
rans_byte scheme, exact for states below 2^31), decoding looks the symbol up by slot. Symbols are encoded last to first and
the words are stored in decoding order, so the decoder runs front to back.

The stream a codec stores is the table (`write_table`) and the words; `read_table` checks every
row of a hostile table before anything is built from it.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..errors import CorruptStreamError

PROB_BITS = 11  # 12 codes no better on activations: the bigger tables cost what precision gains
M = 1 << PROB_BITS
assert M <= 1 << 11, "decoder_table packs frequency and offset on 12 bits each"
STATE_LOW = 1 << 15  # the state stays in [STATE_LOW, STATE_HIGH)
STATE_HIGH = 1 << 31


@njit(cache=True, nogil=True)
def normalize(counts):
    """Frequencies summing to M in every row with counts, each used symbol at least 1; rows
    without counts stay zero. A row with fewer than M counts is normalized to the power of two
    at or above its count and scaled up: as exact for so few samples, and its table entries
    shrink to a byte (`write_table` stores them scaled down)."""
    freq = np.zeros(counts.shape, np.int64)
    for r in range(counts.shape[0]):
        total = counts[r].sum()
        if total == 0:
            continue
        bits = 0
        while (1 << bits) < min(total, M):
            bits += 1
        scale = 1 << bits
        for s in range(counts.shape[1]):
            if counts[r, s]:
                freq[r, s] = max(1, (counts[r, s] * scale + total // 2) // total)
        while True:  # rounding left the sum off by a little: move it onto the largest
            excess = freq[r].sum() - scale
            if excess == 0:
                break
            j = np.argmax(freq[r])
            freq[r, j] -= min(excess, freq[r, j] - 1)
        freq[r] <<= PROB_BITS - bits
    return freq


@njit(cache=True, nogil=True)
def _write_varint(v, out, o):
    while v >= 0x80:
        out[o] = (v & 0x7F) | 0x80
        v >>= 7
        o += 1
    out[o] = v
    return o + 1


@njit(cache=True, nogil=True)
def _table_bytes(freq, out):
    o = 0
    for r in range(freq.shape[0]):
        used, shift = 0, PROB_BITS
        for s in range(freq.shape[1]):
            if freq[r, s]:
                used = s + 1
                while freq[r, s] & ((1 << shift) - 1):  # the scale all of the row's entries share
                    shift -= 1
        o = _write_varint(used, out, o)
        if used == 0:
            continue
        out[o] = shift
        o += 1
        for byte in range((used + 7) // 8):
            bitmap = 0
            for bit in range(8):
                s = 8 * byte + bit
                if s < used and freq[r, s]:
                    bitmap |= 1 << bit
            out[o] = bitmap
            o += 1
        for s in range(used):
            if freq[r, s]:
                o = _write_varint(freq[r, s] >> shift, out, o)
    return o


def write_table(freq: np.ndarray) -> bytes:
    """Per row: the number of symbols up to the last used one (0: unused row), then the shift
    all its frequencies share, a bitmap of the used symbols, and their frequencies shifted down
    (varints). A row of few counts costs a byte or two per used symbol."""
    out = np.empty(freq.size * 3 + 2 * freq.shape[0] + 8, np.uint8)
    return out[:_table_bytes(freq, out)].tobytes()


@njit(cache=True, nogil=True)
def _read_varint(buf, p):
    """(value, next position) of the varint at p, or (-1, p) if it runs past buf or 3 bytes."""
    v = 0
    for shift in range(0, 21, 7):
        if p >= buf.shape[0]:
            return -1, p
        byte = np.int64(buf[p])
        p += 1
        v |= (byte & 0x7F) << shift
        if byte < 0x80:
            return v, p
    return -1, p


@njit(cache=True, nogil=True)
def _parse_table(buf, contexts, valid, freq):
    """Fill freq from buf (the write_table format); returns the bytes read, or -1 if malformed."""
    p = 0
    for r in range(contexts):
        used, p = _read_varint(buf, p)
        if used < 0 or used > valid.shape[0]:
            return -1
        if used == 0:
            continue
        if p >= buf.shape[0] or buf[p] > PROB_BITS:
            return -1
        shift = np.int64(buf[p])
        bitmap = p + 1
        p = bitmap + (used + 7) // 8
        if p > buf.shape[0]:
            return -1
        total = 0
        for s in range(used):
            if buf[bitmap + s // 8] & (1 << (s % 8)):
                f, p = _read_varint(buf, p)
                if f <= 0 or not valid[s]:
                    return -1
                freq[r, s] = f << shift
                total += f << shift
        if total != M:
            return -1
    return p


def read_table(buf: bytes, pos: int, contexts: int, valid: np.ndarray) -> tuple[np.ndarray, int]:
    """Inverse of write_table for a model whose allowed symbols are `valid` (bool per symbol)."""
    freq = np.zeros((contexts, valid.shape[0]), np.int64)
    window = np.frombuffer(buf, np.uint8, min(len(buf) - pos, 4 * freq.size + 2 * contexts), pos)
    read = _parse_table(window, contexts, valid, freq)
    if read < 0:
        raise CorruptStreamError("rANS table malformed: a row too long, not summing to M, or using a "
                                 "symbol the model has not")
    return freq, pos + read


@njit(cache=True, nogil=True)
def encoder_table(freq):
    """(contexts * symbols, 5) uint64, row context * symbols + symbol: the reciprocal, shift,
    bias, M - freq and renormalisation threshold of every used symbol."""
    enc = np.zeros((freq.size, 5), np.uint64)
    for r in range(freq.shape[0]):
        start = 0
        for s in range(freq.shape[1]):
            f, j = freq[r, s], r * freq.shape[1] + s
            if f == 1:  # the reciprocal of 1 does not fit 32 bits: q = x - 1 and a bias make up for it
                enc[j, 0], enc[j, 1], enc[j, 2] = 0xFFFFFFFF, 0, start + M - 1
            elif f > 1:
                shift = 0
                while (1 << shift) < f:  # ceil(log2 f)
                    shift += 1
                enc[j, 0], enc[j, 1], enc[j, 2] = ((1 << (shift + 31)) + f - 1) // f, shift - 1, start
            enc[j, 3] = M - f
            enc[j, 4] = f * (STATE_HIGH // M)  # states from here up would leave the range: renormalise
            start += f
    return enc


@njit(cache=True, nogil=True)
def decoder_table(freq):
    """(contexts, M) uint32: for every slot of every context, its symbol | freq << 8 | (slot -
    start of the symbol) << 20, all a decoding step needs in one load. Unused rows stay zero."""
    table = np.zeros((freq.shape[0], M), np.uint32)
    for r in range(freq.shape[0]):
        start = 0
        for s in range(freq.shape[1]):
            for offset in range(freq[r, s]):
                table[r, start + offset] = s | (freq[r, s] << 8) | (offset << 20)
            start += freq[r, s]
    return table


_U16, _U32 = np.uint64(16), np.uint64(32)


# The coding steps take and return scalars only: a numba helper that takes arrays pays reference
# counting on every call, which made the loops 6x slower.
@njit(cache=True, inline="always")
def encode_step(x, rcp, shift, bias, cmpl):
    """The state after encoding a symbol (its encoder_table row) onto the renormalised state x.
    Unsigned all through: x * reciprocal needs all 64 bits."""
    q = ((x * rcp) >> _U32) >> shift
    return x + bias + q * cmpl


@njit(cache=True, inline="always")
def decode_step(x, entry):
    """(symbol, state before renormalisation) from state x and its decoder_table entry."""
    return entry & 0xFF, ((entry >> 8) & 0xFFF) * (x >> PROB_BITS) + (entry >> 20)

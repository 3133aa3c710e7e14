"""`rans`: a two-pass static order-0 model coded with constriction's ANS coder.

Symbols are those of `huffman` (values below 2^11 directly, larger ones as a bit-length escape
plus raw bits), so the model stays small at 16 bits. The stream holds the exact symbol counts
(varints), the ANS words, then the escapes' raw bits. With exact counts the model *is* the
empirical distribution, so the coded size is n * H (order-0 entropy) plus the table, plus
constriction's fixed-point rounding (well under 1 %).

Decoding does not go through constriction: its decoder holds the GIL and searches the CDF
symbol by symbol (25 ns a value here). A numba kernel reads the same streams instead: it
rebuilds the model's fixed-point CDF exactly as constriction quantizes it (`_cdf`), finds each
symbol from a table of the CDF's top bits, and runs constriction's ANS steps (64-bit state,
32-bit words, 24-bit probabilities). A test checks it against constriction's own decoder.

>>> import numpy as np
>>> from actzip.codecs import get
>>> c = get("rans")
>>> c.decode(c.encode(np.array([0, 0, 0, 7, 0, 3000], dtype=np.uint16))).tolist()
[0, 0, 0, 7, 0, 3000]
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..errors import CorruptStreamError
from .base import ChunkedCodec, Header, read_varint, register, unzigzag, write_varint, zigzag
from .bits import (DIRECT_BITS, bit_length, escape_symbol_counts, packed_bytes, padded, peek, write_codes,
                   zigzag_histogram)


@njit(cache=True, nogil=True)
def _split(u, direct):
    """Symbols, and the escape bits (code, length) of each value (length 0 for direct values)."""
    limit = 1 << direct
    symbols = np.empty(u.shape[0], np.int32)
    extra = np.zeros(u.shape[0], np.int64)
    extra_len = np.zeros(u.shape[0], np.int64)
    for i in range(u.shape[0]):
        x = u[i]
        if x < limit:
            symbols[i] = x
        else:
            m = bit_length(x)
            symbols[i] = limit + m - direct - 1
            extra[i] = x & ((1 << (m - 1)) - 1)
            extra_len[i] = m - 1
    return symbols, extra, extra_len


@njit(cache=True, nogil=True)
def _join(symbols, buf, payload_bits, direct, out):
    """Inverse of _split; returns the escape bits read, or -1 on a read past the end."""
    limit = 1 << direct
    pos = 0
    for i in range(symbols.shape[0]):
        s = symbols[i]
        if s < limit:
            out[i] = s
        else:
            m = s - limit + direct + 1
            out[i] = (1 << (m - 1)) | peek(buf, pos, m - 1)
            pos += m - 1
            if pos > payload_bits:
                return -1
    return pos


def _model(counts: np.ndarray):
    import constriction

    return constriction.stream.model.Categorical(counts.astype(np.float64), perfect=False)


PRECISION = 24  # constriction's default categorical models: probabilities on 24 bits
LOOKUP_BITS = 12  # the decoder finds a symbol from the top 12 bits of its quantile, then scans


def _cdf(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The left cumulatives (with 2^24 appended) and the probabilities of the quantized model
    constriction builds from `counts` with perfect=False: each symbol gets 1, and the other
    2^24 - S are spread by truncating the scaled cumulative counts (all exact in float64, as in
    constriction)."""
    n = counts.size
    cumulative = np.concatenate(([0.0], np.cumsum(counts.astype(np.float64))))
    scale = float((1 << PRECISION) - n) / float(cumulative[-1])
    left = np.append(np.floor(cumulative[:-1] * scale).astype(np.int64) + np.arange(n), 1 << PRECISION)
    return left, np.diff(left)


@njit(cache=True, nogil=True)
def _ans_decode(words, left, prob, lookup, out):
    """Decode out.size symbols from constriction's AnsCoder words (a stack: the state is the
    last two words, and words are popped from the end). Returns 0, or -1 unless the words end
    exactly where the symbols do (a sealed stream ends in state 0)."""
    mask = np.uint64((1 << PRECISION) - 1)
    top, state = words.shape[0], np.uint64(0)
    for _ in range(2):
        if top:
            top -= 1
            state = (state << np.uint64(32)) | np.uint64(words[top])
    for i in range(out.shape[0]):
        quantile = state & mask
        s = lookup[quantile >> np.uint64(PRECISION - LOOKUP_BITS)]
        while np.uint64(left[s + 1]) <= quantile:
            s += 1
        out[i] = s
        state = (state >> np.uint64(PRECISION)) * np.uint64(prob[s]) + quantile - np.uint64(left[s])
        if state < np.uint64(1 << 32) and top:
            top -= 1
            state = (state << np.uint64(32)) | np.uint64(words[top])
    return 0 if state == 0 and top == 0 else -1


def _decode_symbols(words: np.ndarray, counts: np.ndarray, n: int) -> np.ndarray | None:
    """The n symbols of a stream constriction coded with _model(counts), or None if the words
    are not such a stream."""
    left, prob = _cdf(counts)
    starts = np.arange(1 << LOOKUP_BITS, dtype=np.int64) << (PRECISION - LOOKUP_BITS)
    lookup = (np.searchsorted(left, starts, side="right") - 1).astype(np.int64)  # the symbol at each start
    symbols = np.empty(n, np.int32)
    return symbols if _ans_decode(words, left, prob, lookup, symbols) == 0 else None


@register
class RANS(ChunkedCodec):
    """Static order-0 model (exact counts) coded with constriction's ANS coder."""

    codec_id = "rans"
    values_per_bit = 65536.0

    def _encode(self, a, bits):
        import constriction

        u = zigzag(a)
        direct = min(bits, DIRECT_BITS)
        counts, _ = escape_symbol_counts(u, direct, (1 << direct) + bits - direct)
        used = int(np.nonzero(counts)[0][-1]) + 1 if a.size else 0
        table = write_varint(used) + b"".join(write_varint(int(c)) for c in counts[:used])
        if used <= 1:  # nothing to code: the table says it all
            return table + write_varint(0)
        symbols, extra, extra_len = _split(u, direct)
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(symbols, _model(counts[:used]))
        words = coder.get_compressed().astype("<u4").tobytes()
        escapes = np.zeros(packed_bytes(int(extra_len.sum())), np.uint8)
        write_codes(extra, extra_len, escapes)
        return table + write_varint(len(words) // 4) + words + escapes.tobytes()

    def _decode(self, h: Header, payload: bytes):
        direct = min(h.bits, DIRECT_BITS)
        used, pos = read_varint(payload, 0, "table size")
        if used > (1 << direct) + h.bits - direct:
            raise CorruptStreamError(f"rans: table of {used} symbols for {h.bits}-bit values")
        counts = np.zeros(max(used, 1), np.int64)
        for s in range(used):
            count, pos = read_varint(payload, pos, "symbol count")
            if count > h.n:  # also keeps a forged 2^64 out of the int64 table
                raise CorruptStreamError(f"rans: a symbol count of {count} in a chunk of {h.n} values")
            counts[s] = count
        if int(counts.sum()) != h.n:
            raise CorruptStreamError(f"rans: the counts add up to {int(counts.sum())}, not {h.n} values")
        n_words, pos = read_varint(payload, pos, "word count")
        if used <= 1:
            if n_words or pos != len(payload):
                raise CorruptStreamError("rans: data after a one-symbol stream")
            return unzigzag(np.full(h.n, used - 1 if used else 0, np.uint32), h.dtype)
        if n_words == 0 or len(payload) < pos + 4 * n_words:
            raise CorruptStreamError("rans: stream truncated inside the ANS words")
        symbols = _decode_symbols(np.frombuffer(payload, "<u4", n_words, pos).astype(np.uint32), counts[:used], h.n)
        # every decoded symbol is below `used` (the model has `used` symbols)
        if symbols is None or not np.array_equal(zigzag_histogram(symbols, False, used), counts[:used]):
            raise CorruptStreamError("rans: the ANS words do not decode to the counted symbols")
        start = pos + 4 * n_words
        if used <= 1 << direct:  # no escape symbols (always so at 8 bits): the symbols are the values
            if start != len(payload):
                raise CorruptStreamError("rans: garbage after the ANS words")
            return unzigzag(symbols, h.dtype)
        u = np.empty(h.n, np.uint32)
        used_bits = _join(symbols, padded(payload, start), 8 * (len(payload) - start), direct, u)
        if used_bits < 0 or packed_bytes(used_bits) != len(payload) - start:
            raise CorruptStreamError("rans: escape bits truncated or followed by garbage")
        return unzigzag(u, h.dtype)

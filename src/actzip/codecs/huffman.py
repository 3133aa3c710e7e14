"""`huffman`: canonical Huffman coding with the code-length table in the stream.

Alphabet: a value u < 2^D (D = min(b, 11)) is its own symbol; a larger u with m significant bits
becomes the escape symbol 2^D + (m - D - 1) followed by its m - 1 bits below the leading one. The
alphabet stays at most 2^11 + 5 symbols for any bit width, so the table stays small. Code lengths
are limited to 15 bits (JPEG Annex K.3 adjustment), and decoding is one lookup of the next 15 bits.

Cost: sum over values of len(symbol) (+ the escape's m - 1 bits), plus the table: a varint S (the
highest used symbol + 1) and S 4-bit code lengths.

>>> import numpy as np
>>> from actzip.codecs import get
>>> c = get("huffman")
>>> c.decode(c.encode(np.array([0, 0, 0, 0, 1, 1, 2, 300], dtype=np.uint16))).tolist()
[0, 0, 0, 0, 1, 1, 2, 300]
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..errors import CorruptStreamError
from .base import ChunkedCodec, Header, read_varint, register, unzigzag, write_varint, zigzag
from .bits import DIRECT_BITS, bit_length, escape_symbol_counts, packed_bytes, padded, peek

MAX_LEN = 15


@njit(cache=True, nogil=True)
def _code_lengths(counts):
    """Huffman code lengths (0 = unused), limited to MAX_LEN bits."""
    n = counts.shape[0]
    used = np.nonzero(counts)[0]
    lengths = np.zeros(n, np.int64)
    m = used.shape[0]
    if m == 0:
        return lengths
    if m == 1:
        lengths[used[0]] = 1
        return lengths
    order = used[np.argsort(counts[used], kind="mergesort")]  # ascending frequency
    # two-queue Huffman: leaves 0..m-1 (sorted), internal nodes m..2m-2 created in increasing weight
    weight = np.zeros(2 * m - 1, np.int64)
    parent = np.zeros(2 * m - 1, np.int64)
    weight[:m] = counts[order]
    leaf, node = 0, m
    for new in range(m, 2 * m - 1):
        picked = np.empty(2, np.int64)
        for j in range(2):
            if leaf < m and (node >= new or weight[leaf] <= weight[node]):
                picked[j] = leaf
                leaf += 1
            else:
                picked[j] = node
                node += 1
        weight[new] = weight[picked[0]] + weight[picked[1]]
        parent[picked[0]] = new
        parent[picked[1]] = new
    depth = np.zeros(2 * m - 1, np.int64)
    for i in range(2 * m - 3, -1, -1):
        depth[i] = depth[parent[i]] + 1
    # count codes per length, then push overlong codes up (JPEG Annex K.3)
    per_length = np.zeros(max(2 * m, MAX_LEN + 2), np.int64)
    for i in range(m):
        per_length[depth[i]] += 1
    for i in range(per_length.shape[0] - 1, MAX_LEN, -1):
        while per_length[i] > 0:
            j = i - 2
            while per_length[j] == 0:
                j -= 1
            per_length[i] -= 2
            per_length[i - 1] += 1
            per_length[j + 1] += 2
            per_length[j] -= 1
    # most frequent symbols get the shortest codes
    k = m - 1
    for length in range(1, MAX_LEN + 1):
        for _ in range(per_length[length]):
            lengths[order[k]] = length
            k -= 1
    return lengths


@njit(cache=True, nogil=True)
def _canonical_codes(lengths):
    """Canonical codes: by (length, symbol) in increasing order. Returns -1 if the lengths
    oversubscribe the code space (only a corrupt table does)."""
    per_length = np.zeros(MAX_LEN + 1, np.int64)
    for s in range(lengths.shape[0]):
        per_length[lengths[s]] += 1
    per_length[0] = 0
    kraft = 0
    for length in range(1, MAX_LEN + 1):
        kraft += per_length[length] << (MAX_LEN - length)
    if kraft > (1 << MAX_LEN):
        return np.zeros(0, np.int64)
    next_code = np.zeros(MAX_LEN + 2, np.int64)
    code = 0
    for length in range(1, MAX_LEN + 1):
        code = (code + per_length[length - 1]) << 1
        next_code[length] = code
    codes = np.zeros(lengths.shape[0], np.int64)
    for s in range(lengths.shape[0]):
        if lengths[s]:
            codes[s] = next_code[lengths[s]]
            next_code[lengths[s]] += 1
    return codes


@njit(cache=True, nogil=True)
def _encode(u, direct, codes, lengths, out):
    limit = 1 << direct
    acc = np.uint64(0)
    nacc = 0
    o = 0
    for i in range(u.shape[0]):
        x = u[i]
        if x < limit:
            code, length = codes[x], lengths[x]
        else:
            m = bit_length(x)
            s = limit + m - direct - 1
            # the escape's code, then the m - 1 bits below x's leading one
            code = (codes[s] << (m - 1)) | (x & ((1 << (m - 1)) - 1))
            length = lengths[s] + m - 1
        acc = (acc << np.uint64(length)) | np.uint64(code)
        nacc += length
        while nacc >= 8:
            nacc -= 8
            out[o] = np.uint8((acc >> np.uint64(nacc)) & np.uint64(0xFF))
            o += 1
    if nacc:
        out[o] = np.uint8((acc << np.uint64(8 - nacc)) & np.uint64(0xFF))


@njit(cache=True, nogil=True)
def _decode(buf, payload_bits, n, direct, codes, lengths, out):
    """Returns the bits read, or -1 on a code that is not in the table or a read past the end."""
    size = 1 << MAX_LEN
    table_sym = np.zeros(size, np.int32)
    table_len = np.zeros(size, np.uint8)
    for s in range(lengths.shape[0]):
        length = lengths[s]
        if length:
            first = codes[s] << (MAX_LEN - length)
            for j in range(first, first + (1 << (MAX_LEN - length))):
                table_sym[j] = s
                table_len[j] = length
    limit = 1 << direct
    pos = 0
    for i in range(n):
        prefix = peek(buf, pos, MAX_LEN)
        length = table_len[prefix]
        if length == 0:
            return -1
        pos += length
        s = table_sym[prefix]
        if s < limit:
            out[i] = s
        else:
            m = s - limit + direct + 1
            out[i] = (1 << (m - 1)) | peek(buf, pos, m - 1)
            pos += m - 1
        if pos > payload_bits:
            return -1
    return pos


def _pack_lengths(lengths: np.ndarray) -> bytes:
    used = int(np.nonzero(lengths)[0][-1]) + 1 if lengths.any() else 0
    nibbles = lengths[:used].astype(np.uint8)
    if used % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    return write_varint(used) + ((nibbles[0::2] << 4) | nibbles[1::2]).astype(np.uint8).tobytes()


@register
class Huffman(ChunkedCodec):
    """Canonical Huffman, 15-bit length limit, table in the stream."""

    codec_id = "huffman"
    values_per_bit = 1.0

    def _encode(self, a, bits):
        u = zigzag(a)
        direct = min(bits, DIRECT_BITS)
        n_symbols = (1 << direct) + bits - direct
        counts, extra = escape_symbol_counts(u, direct, n_symbols)
        lengths = _code_lengths(counts)
        codes = _canonical_codes(lengths)
        out = np.zeros(packed_bytes(int((counts * lengths).sum()) + extra), np.uint8)
        _encode(u, direct, codes, lengths, out)
        return _pack_lengths(lengths) + out.tobytes()

    def _decode(self, h: Header, payload: bytes):
        direct = min(h.bits, DIRECT_BITS)
        used, pos = read_varint(payload, 0, "table size")
        if used > (1 << direct) + h.bits - direct:
            raise CorruptStreamError(f"huffman: table of {used} symbols for {h.bits}-bit values")
        table_bytes = (used + 1) // 2
        if len(payload) < pos + table_bytes:
            raise CorruptStreamError("huffman: stream truncated inside the code table")
        packed = np.frombuffer(payload, np.uint8, table_bytes, pos)
        lengths = np.empty(2 * table_bytes, np.int64)
        lengths[0::2], lengths[1::2] = packed >> 4, packed & 15
        lengths = lengths[:used]
        codes = _canonical_codes(lengths)
        if codes.size != lengths.size or (h.n and not lengths.any()):
            raise CorruptStreamError("huffman: the code table is not a prefix code")
        start = pos + table_bytes
        u = np.empty(h.n, np.uint32)
        used_bits = _decode(padded(payload, start), 8 * (len(payload) - start), h.n, direct, codes, lengths, u)
        if used_bits < 0 or packed_bytes(used_bits) != len(payload) - start:
            raise CorruptStreamError("huffman: malformed or truncated code stream")
        return unzigzag(u, h.dtype)

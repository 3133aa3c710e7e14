"""`ctxrans`: a static context model coded with rANS; one symbol per value, so it is fast.

The array is read as planes of (..., C, H, W), like `ctx`. A value u (zigzag for signed) with bit
length m + 1 becomes one symbol, (m + 1, the K = 2 bits below its leading one), or 0 for a zero;
its remaining m - 2 bits go raw into a plain bitstream. The symbol is coded in the context of
the bit lengths of its left and upper neighbours (9 classes each, 81 contexts). One table of
frequencies per context serves the whole stream (two passes: count, then code), and the values
are coded in independent chunks of at most 2^14 values, in parallel. That keeps most of what
`ctx`'s adaptive binary model finds (zero runs, smooth magnitudes) at several times its speed.

The coder is compiled (kernels.c, through `native`): the encoder's two passes run a whole run of
chunks per call, and the decoder advances 16 chunks side by side, one per AVX-512 lane, two such
groups in turns (portable C elsewhere); the numba loops below are the fallback where the install
had no C compiler, and write and read the same streams.

Stream: the header, a mode byte, then either the values packed raw (when coding would not
shrink them) or the plane width and height, the table, and the chunks (sizes, then payloads:
word count, raw bit count, the rANS words of two interleaved states, the raw bits). Mode 3 names
its values per chunk in a varint after the mode (see chunk_values; up to 2^16); modes 2 and 1
(written before) have chunks of 2^14 and 2^16 values. Cost: the table (`ans.write_table`: 0.3
to 2 KB), the symbols' conditional entropy plus under 0.5 % for the table's 11-bit precision,
about 12 bytes per chunk, and the raw bits. Below some 10^5 values the table weighs: `ctx`,
which needs none, then codes smaller.

>>> import numpy as np
>>> from actzip.codecs import get
>>> a = np.maximum(np.random.default_rng(0).integers(-40, 60, (2, 4, 16, 16)), 0).astype(np.uint8)
>>> c = get("ctxrans")
>>> bool((c.decode(c.encode(a)) == a.ravel()).all())
True
"""

from __future__ import annotations

import ctypes
from functools import cache

import numpy as np
from numba import njit

from ..errors import CorruptStreamError
from . import ans, native
from .base import (MAX_VALUES, Codec, check_input, decode_chunks, pack_header, parallel_map,
                   parse_header, read_varint, register, split_chunks, stream_bytes, threads, unzigzag, write_varint,
                   zigzag)
from .bits import PAD, pack_values, packed_bytes, padded, unpack_values
from .layout import next_position, plane_shape

K = 2  # bits below the leading one that go into the symbol
CLASSES = 9  # a neighbour's bit length as a context class, 0 (zero or absent) .. 8
CONTEXTS = CLASSES * CLASSES
# Values per chunk. Chunks spread a stream over the cores, and the C decoder advances 16 of them side
# by side, as long as the longest. So SIZED streams (mode 3) come in a multiple of 2 x 16 chunks (two
# cores' lanes, all full) of at most 2^14 values, or in chunks of 2^11 when that is too short, and
# name their size; the modes written before have one size. 2^14 costs 0.15 % of the ratio against
# 2^16 (the chunk lengths and states, and the neighbours lost at each start).
RAW, CODED_64K, CODED, SIZED = 0, 1, 2, 3
CHUNK_VALUES = {CODED_64K: 1 << 16, CODED: 1 << 14}
LANES_WANTED, LONGEST, SHORTEST = 32, 1 << 14, 1 << 11
MAX_CHUNK = 1 << 16  # the most a SIZED stream may name: bounds the decoders' padding
TABLE_PAD = 16  # slots the C decoder's table builder may write past the table (kernels.c)
_WORD, _U16, _U32, _BYTE = np.uint64(0xFFFF), np.uint64(16), np.uint64(32), np.uint64(0xFF)


def chunk_values(n: int) -> int:
    """Values per chunk for a stream of n values (mode SIZED)."""
    count = LANES_WANTED * -(-n // (LANES_WANTED * LONGEST))
    return max(-(-n // count), SHORTEST)


@cache
def symbol_tables(bits: int) -> tuple[np.ndarray, ...]:
    """Per symbol: whether it can occur, the value it stands for without its raw bits, how many
    raw bits follow, and its context class."""
    symbols = np.arange((bits + 1) << K)
    length, top = symbols >> K, symbols & ((1 << K) - 1)
    m = np.maximum(length - 1, 0)
    k = np.minimum(m, K)
    valid = (length == 0) & (top == 0) | (length > 0) & (top < (1 << k))
    base = np.where(length > 0, (1 << m) | (top << (m - k)), 0) * valid
    classes = np.minimum((length + 1) >> 1 if bits > 8 else length, CLASSES - 1)
    return valid, base.astype(np.int64), (m - k).astype(np.int64) * valid, classes.astype(np.uint8)


@cache
def value_tables(bits: int) -> tuple[np.ndarray, ...]:
    """Per (zigzag) value: its symbol, its raw bit count, and its context class."""
    u = np.arange(1 << bits)
    length = np.where(u > 0, np.floor(np.log2(np.maximum(u, 1))).astype(np.int64) + 1, 0)
    m = np.maximum(length - 1, 0)
    k = np.minimum(m, K)
    symbols = np.where(u > 0, (length << K) | ((u >> (m - k)) & ((1 << k) - 1)), 0)
    _, _, raw, classes = symbol_tables(bits)
    return symbols.astype(np.uint8), raw[symbols], classes[symbols]


@njit(cache=True, nogil=True)
def _first_pass(a, signed, width, height, x0, y0, symbol_of, raw_of, class_of, contexts, symbols, raw_out, counts):
    """Each value's context and symbol (of its zigzag, for a signed `a`), the (context, symbol)
    counts added to `counts`, and the raw bits written to raw_out (MSB first, whole 32-bit words,
    then the tail); returns the raw bit count. Zigzag here, not as a numpy pass before: that took
    five passes over the map.

    Values before the chunk count as zeros, so chunks decode independently: `cls` holds the
    classes row + 1 places ahead (cls[i + row + 1] is value i's), zeros before them, and row = 0
    when a row is longer than the chunk (no upper neighbour is then in it, and a 1-D array of n
    values, one row of n, does not cost n bytes per chunk). The loop has no data-dependent branch: zeros and
    non-zeros come at random, and mispredictions were a third of the time."""
    racc, rnacc, ro = np.uint64(0), np.uint64(0), 0
    row = width if width <= a.shape[0] else 0
    cls = np.zeros(a.shape[0] + row + 1, np.uint8)
    x, y = x0, y0
    for i in range(a.shape[0]):
        left = cls[i + row] if x > 0 else 0
        up = cls[i + 1] if y > 0 and row > 0 else 0
        ctx = np.int64(left) * CLASSES + np.int64(up)
        v = np.int64(a[i])
        if signed:
            v = (v << 1) ^ (v >> 63)
        sym = symbol_of[v]
        cls[i + row + 1] = class_of[v]
        contexts[i] = ctx
        symbols[i] = sym
        counts[ctx, sym] += 1
        r = np.uint64(raw_of[v])
        racc = (racc << r) | (np.uint64(v) & ((np.uint64(1) << r) - np.uint64(1)))
        rnacc += r
        if rnacc >= _U32:  # a whole word of raw bits: out with it, most significant byte first
            rnacc -= _U32
            w = racc >> rnacc
            raw_out[ro] = np.uint8((w >> np.uint64(24)) & _BYTE)
            raw_out[ro + 1] = np.uint8((w >> _U16) & _BYTE)
            raw_out[ro + 2] = np.uint8((w >> np.uint64(8)) & _BYTE)
            raw_out[ro + 3] = np.uint8(w & _BYTE)
            ro += 4
        x, y, _ = next_position(x, y, 0, width, height, 1)  # within its plane
    tail = (racc << (_U32 - rnacc)) & np.uint64(0xFFFFFFFF)  # fewer than 32 bits, MSB first
    for j in range(4):
        raw_out[ro + j] = np.uint8((tail >> np.uint64(24 - 8 * j)) & _BYTE)
    return 8 * ro + np.int64(rnacc)


@njit(cache=True, nogil=True)
def _code(contexts, symbols, enc, out):
    """rANS-code the symbols last to first into the end of `out`; returns where the words start.

    Two states take turns (value i goes to state i % 2), so one's multiply chain runs while the
    other's waits: the loop is latency-bound otherwise. `x` is always the state of the value at
    hand; swapping after each value alternates them. The renormalisation is branch-free: the
    word is always stored, and kept only if it is due."""
    x, other = np.uint64(ans.STATE_LOW), np.uint64(ans.STATE_LOW)
    o = out.shape[0]
    symbols_per_context = enc.shape[0] // CONTEXTS
    for i in range(contexts.shape[0] - 1, -1, -1):
        j = np.int64(contexts[i]) * symbols_per_context + np.int64(symbols[i])
        emit = np.uint64(x >= enc[j, 4])
        out[o - 1] = np.uint16(x & _WORD)
        o -= np.int64(emit)
        x >>= _U16 * emit
        x, other = other, ans.encode_step(x, enc[j, 0], enc[j, 1], enc[j, 2], enc[j, 3])
    # now `other` holds value 0's state, `x` value 1's: the decoder reads them in that order
    out[o - 1] = np.uint16(x & _WORD)
    out[o - 2] = np.uint16(x >> _U16)
    out[o - 3] = np.uint16(other & _WORD)
    out[o - 4] = np.uint16(other >> _U16)
    return o - 4


@njit(cache=True, nogil=True)
def _decode(words, n_words, raw, raw_bits, n, width, height, x0, y0, table, used, base, raw_of, class_of, signed, out):
    """Inverse of _first_pass + _code into `out` (un-zigzagged when signed: the output's own
    dtype, its slice of the whole); returns 0, or -1 if the chunk does not
    decode using exactly its words and raw bits, ending in the encoder's initial states. `words`
    and `raw` are padded: a value reads at most one word, and raw bytes at most 12 past the end,
    before its check."""
    if n_words < 4:
        return -1
    state = (np.int64(words[0]) << 16) | np.int64(words[1])  # value 0's state; `other` value 1's
    other = (np.int64(words[2]) << 16) | np.int64(words[3])
    if not (ans.STATE_LOW <= state < ans.STATE_HIGH and ans.STATE_LOW <= other < ans.STATE_HIGH):
        return -1
    p = 4
    raw_bytes = (raw_bits + 7) // 8
    row = width if width <= n else 0  # as in _first_pass
    cls = np.zeros(n + row + 1, np.uint8)
    rp, racc, rnacc = 0, np.uint64(0), np.uint64(0)  # racc holds rnacc unread raw bits, lowest first out
    x, y = x0, y0
    for i in range(n):
        left = cls[i + row] if x > 0 else 0
        up = cls[i + 1] if y > 0 and row > 0 else 0
        ctx = np.int64(left) * CLASSES + np.int64(up)
        if not used[ctx]:
            return -1
        sym, state = ans.decode_step(state, np.int64(table[ctx, state & (ans.M - 1)]))
        need = np.int64(state < ans.STATE_LOW)
        state, other = other, (state << (16 * need)) | (np.int64(words[p]) & -need)
        p += need
        cls[i + row + 1] = class_of[sym]
        r = np.uint64(raw_of[sym])
        if rnacc < _U32:  # top up with the next 32 raw bits
            racc = ((racc << _U32) | (np.uint64(raw[rp]) << np.uint64(24)) | (np.uint64(raw[rp + 1]) << _U16)
                    | (np.uint64(raw[rp + 2]) << np.uint64(8)) | np.uint64(raw[rp + 3]))
            rp += 4
            rnacc += _U32
            if rp > raw_bytes + 8:  # the top-up runs up to 8 bytes ahead of the bits used
                return -1
        rnacc -= r
        v = base[sym] | np.int64((racc >> rnacc) & ((np.uint64(1) << r) - np.uint64(1)))
        out[i] = (v >> 1) ^ -(v & 1) if signed else v
        if p > n_words:
            return -1
        x, y, _ = next_position(x, y, 0, width, height, 1)  # within its plane
    if p != n_words or state != ans.STATE_LOW or other != ans.STATE_LOW or 8 * rp - np.int64(rnacc) != raw_bits:
        return -1
    return 0


@register
class ContextRANS(Codec):
    """Static context model (neighbours' bit lengths) coded with rANS: one symbol per value."""

    codec_id = "ctxrans"
    values_per_bit = float(ans.M)  # a symbol costs at least log2(M / (M - 1)) bits

    def encode(self, a_in) -> bytes:
        a, bits = check_input(a_in, self.bits)
        head = pack_header(a, bits)
        if a.size:
            _, height, width = plane_shape(np.shape(a_in))
            chunk = chunk_values(a.size)
            if native.library() is None:
                freq, payloads = self._encode_numba(a, bits, width, height, chunk)
                sizes, joined = [len(p) for p in payloads], b"".join(payloads)
            else:
                freq, sizes, joined = encode_native(a, bits, width, height, chunk)
            coded = b"".join([head, bytes([SIZED]), write_varint(chunk), write_varint(width), write_varint(height),
                              ans.write_table(freq), *(write_varint(int(s)) for s in sizes), joined])
            if len(coded) < len(head) + 1 + packed_bytes(a.size * bits):
                return coded
        return head + bytes([RAW]) + pack_values(zigzag(a), bits)

    def _encode_numba(self, a, bits, width, height, chunk) -> tuple[np.ndarray, list[bytes]]:
        """(frequencies, chunk payloads) with the numba loops, a chunk at a time on the codec pool."""
        native.warn_if_missing()
        passes = parallel_map(lambda start: self._symbolize(a[start:start + chunk], bits, width, height, start),
                              list(range(0, a.size, chunk)))
        freq = ans.normalize(sum(counts for *_, counts in passes))
        enc = ans.encoder_table(freq)
        return freq, parallel_map(lambda job: self._code_chunk(*job[:4], enc), passes)

    @staticmethod
    def _read_chunk_size(buf: bytes, pos: int, mode: int) -> tuple[int, int]:
        """(values per chunk, where the plane size starts) for a coded stream of this mode."""
        if mode in CHUNK_VALUES:
            return CHUNK_VALUES[mode], pos
        if mode != SIZED:
            raise CorruptStreamError(f"ctxrans: unknown mode {mode}")
        chunk, pos = read_varint(buf, pos, "chunk size")
        if not 0 < chunk <= MAX_CHUNK:
            raise CorruptStreamError(f"ctxrans: chunk size {chunk} out of range")
        return chunk, pos

    @staticmethod
    def _symbolize(a, bits, width, height, start):
        """One chunk's first pass: (contexts, symbols, raw bits buffer, raw bit count, counts)."""
        y0, x0 = divmod(start % (width * height), width)
        contexts = np.empty(a.size, np.uint8)
        symbols = np.empty(a.size, np.uint8)
        raw_out = np.zeros(packed_bytes(a.size * max(bits - K - 1, 0)) + 4, np.uint8)  # + the tail's word
        counts = np.zeros((CONTEXTS, (bits + 1) << K), np.int64)
        raw_bits = _first_pass(a, a.dtype.kind == "i", width, height, x0, y0, *value_tables(bits), contexts, symbols,
                               raw_out, counts)
        return contexts, symbols, raw_out, raw_bits, counts

    @staticmethod
    def _code_chunk(contexts, symbols, raw_out, raw_bits, enc):
        words = np.empty(contexts.size + 4, np.uint16)  # at most a word per value, and the two states
        first = _code(contexts, symbols, enc, words)
        return (write_varint(words.size - first) + write_varint(raw_bits) + words[first:].astype("<u2", copy=False).tobytes()
                + raw_out[:packed_bytes(raw_bits)].tobytes())

    def decode(self, buf) -> np.ndarray:
        buf = stream_bytes(buf)
        h = parse_header(buf)
        if len(buf) <= h.size:
            raise CorruptStreamError("ctxrans: stream ends before its mode byte")
        mode = buf[h.size]
        if mode == RAW:
            return unzigzag(unpack_values(buf, h.size + 1, h.n, h.bits, "ctxrans"), h.dtype)
        chunk, pos = self._read_chunk_size(buf, h.size + 1, mode)
        width, pos = read_varint(buf, pos, "width")
        height, pos = read_varint(buf, pos, "height")
        if not (0 < width <= MAX_VALUES and 0 < height <= MAX_VALUES):
            raise CorruptStreamError("ctxrans: bad plane size")
        valid, base, raw_of, class_of = symbol_tables(h.bits)
        freq, pos = ans.read_table(buf, pos, CONTEXTS, valid)
        if native.library() is not None:
            return decode_native(buf, pos, chunk, h, width, height, freq)
        native.warn_if_missing()
        jobs = split_chunks(buf, h, pos, chunk, self.values_per_bit, self.codec_id)
        table, used = ans.decoder_table(freq), freq.sum(1) > 0
        signed = h.dtype.kind == "i"

        def decode_chunk(i, sub, payload, values):
            y0, x0 = divmod(i * chunk % (width * height), width)
            words, n_words, raw, raw_bits = chunk_parts(payload, sub.n)
            if _decode(words, n_words, raw, raw_bits, sub.n, width, height, x0, y0, table, used, base, raw_of,
                       class_of, signed, values) < 0:
                raise CorruptStreamError("ctxrans: malformed or truncated stream")

        return decode_chunks(jobs, h, chunk, decode_chunk, self.codec_id)


@cache
def encode_tables(bits: int) -> tuple[np.ndarray, ...]:
    """value_tables as the C encoder takes them: symbol, class and raw bit count as bytes."""
    symbols, raw, classes = value_tables(bits)
    return symbols, classes, raw.astype(np.uint8)


def encode_native(a: np.ndarray, bits: int, width: int, height: int, chunk: int) -> tuple[np.ndarray, np.ndarray, bytes]:
    """(frequencies, chunk payload sizes, the payloads one after another) with the C encoder, each
    codec thread taking a contiguous run of chunks through both passes (one call per pass and for
    the payloads, not one per chunk)."""
    lib = native.library()
    starts = np.arange(0, a.size, chunk)
    shares = [s for s in np.array_split(starts, min(len(starts), threads())) if len(s)]
    tables = encode_tables(bits)

    def first_pass(share):
        n = np.minimum(share + chunk, a.size) - share
        buffers = (np.empty(n.sum(), np.uint8), np.empty(n.sum(), np.uint8),
                   np.empty((len(share), packed_bytes(chunk * max(bits - K - 1, 0)) + 4), np.uint8),
                   np.empty((len(share), chunk + 4), np.uint16), np.zeros((CONTEXTS, (bits + 1) << K), np.int64))
        contexts, symbols, raw, words, counts = buffers
        chunks = (native.EncodeChunk * len(share))()
        # addresses as plain ints, taken once: `.ctypes` on every chunk cost a tenth of the encode
        at = [b.ctypes.data for b in (a, contexts, symbols, raw, words)]
        first = int(share[0])
        for j, start in enumerate(share.tolist()):
            y0, x0 = divmod(start % (width * height), width)
            chunks[j] = native.EncodeChunk(at[0] + start * a.itemsize, at[1] + start - first, at[2] + start - first,
                                           at[3] + j * raw.strides[0], at[4] + j * words.strides[0],
                                           min(chunk, a.size - start), x0, y0)
        model = native.EncodeModel(*(t.ctypes.data for t in tables), None, counts.ctypes.data, width, height, a.itemsize,
                                   int(a.dtype.kind == "i"), counts.shape[1])
        lib.actzip_ctxrans_first_pass(chunks, len(share), ctypes.byref(model))
        return chunks, model, buffers

    runs = parallel_map(first_pass, shares)
    freq = ans.normalize(sum(buffers[-1] for *_, buffers in runs))
    enc = ans.encoder_table(freq)

    def code(run):
        chunks, model, (_, _, raw, words, _) = run
        model.enc = enc.ctypes.data
        if lib.actzip_ctxrans_code(chunks, len(chunks), ctypes.byref(model)):
            raise MemoryError("ctxrans: no memory for the encoder's table")
        out, sizes = np.empty(raw.size + words.nbytes + 20 * len(chunks), np.uint8), np.empty(len(chunks), np.int64)
        total = lib.actzip_ctxrans_payloads(chunks, len(chunks), out.ctypes.data, sizes.ctypes.data)
        return sizes, out[:total].tobytes()

    coded = parallel_map(code, runs)
    return freq, np.concatenate([sizes for sizes, _ in coded]), b"".join(blob for _, blob in coded)


def chunk_parts(payload, n: int) -> tuple[np.ndarray, int, np.ndarray, int]:
    """A chunk's (rANS words, word count, raw bits, raw bit count), its sections checked against its
    length. The words are padded to at least n + 6 (a value reads at most one, after the four of
    the states; the C decoder fetches two at a time), the raw bytes by bits.PAD: the decoders may
    read that far into a hostile chunk."""
    n_words, at = read_varint(payload, 0, "word count")
    raw_bits, at = read_varint(payload, at, "raw bit count")
    if at + 2 * n_words + packed_bytes(raw_bits) != len(payload):
        raise CorruptStreamError("ctxrans: section lengths do not match the chunk")
    words = np.zeros(max(n_words, n + 4) + 2, np.uint16)
    words[:n_words] = np.frombuffer(payload, "<u2", n_words, at)
    return words, n_words, padded(payload, at + 2 * n_words), raw_bits


@cache
def symbol_info(bits: int) -> np.ndarray:
    """Per symbol, for the C decoder: its base value | raw bit count << 32 | context class << 40."""
    _, base, raw_of, class_of = symbol_tables(bits)
    return (base.astype(np.uint64) | raw_of.astype(np.uint64) << np.uint64(32)
            | class_of.astype(np.uint64) << np.uint64(40))


def decode_native(buf: bytes, pos: int, chunk: int, h, width: int, height: int, freq: np.ndarray) -> np.ndarray:
    """Every chunk (their sizes from buf[pos:]) with the C decoder, in groups of `native.lanes()`
    chunks decoded side by side, the groups shared between the codec threads. The decoder reads
    the words and raw bits in place, from one padded copy of the stream: a hostile chunk may make
    it read n + 6 words past its own."""
    lib, lanes, count = native.library(), native.lanes(), -(-h.n // chunk)
    if count > len(buf) - pos:  # every chunk needs at least its one-byte size
        raise CorruptStreamError(f"ctxrans: {h.n} values need {count} chunks, the stream is too short")
    data = np.empty(len(buf) + 2 * (chunk + 6) + PAD, np.uint8)
    data[:len(buf)] = np.frombuffer(buf, np.uint8)
    data[len(buf):] = 0
    out = np.empty(h.n, h.dtype)
    chunks = (native.Chunk * count)()
    if lib.actzip_ctxrans_chunks(data.ctypes.data, pos, len(buf), count, chunk, h.n, width, height, out.ctypes.data,
                                 out.itemsize, chunks):
        raise CorruptStreamError("ctxrans: chunk sizes or sections do not add up to the stream")
    ring = 1 << int(width).bit_length() if width <= chunk else 2  # more than a row of classes
    isa = native.isa() if data.size < 1 << 31 else 0  # the AVX-512 path addresses the stream by 32-bit offsets
    # a thread's share is whole steps of the decoder: on AVX-512 two groups of lanes in turns, which
    # one core decodes about as fast as two cores decode a group each
    step = 2 * lanes if isa == 2 else lanes
    steps = -(-count // step)
    parts = min(steps, threads())
    bounds = [step * (k * (steps // parts) + min(k, steps % parts)) for k in range(parts + 1)]  # as np.array_split
    shares = [(first, min(end, count) - first) for first, end in zip(bounds, bounds[1:])]
    freq = np.ascontiguousarray(freq, np.int64)
    table = np.empty(CONTEXTS * ans.M + TABLE_PAD, np.uint32)
    lib.actzip_ctxrans_table(freq.ctypes.data, CONTEXTS, freq.shape[1], table.ctypes.data)
    used, info = (freq.sum(1) > 0).astype(np.uint8), symbol_info(h.bits)

    def run(share):
        first, count = share
        rings = np.empty(2 * lanes * ring, np.uint8)  # two groups' rings, for the AVX-512 decoder
        model = native.Model(table.ctypes.data, used.ctypes.data, info.ctypes.data, rings.ctypes.data, data.ctypes.data,
                             width, height, ring, out.itemsize, int(h.dtype.kind == "i"), h.bits)
        return lib.actzip_ctxrans_decode(ctypes.byref(chunks, int(first) * ctypes.sizeof(native.Chunk)), int(count),
                                         ctypes.byref(model), isa)

    if any(parallel_map(run, shares)):
        raise CorruptStreamError("ctxrans: malformed or truncated stream")
    return out

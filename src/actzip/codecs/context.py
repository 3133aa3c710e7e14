"""`ctx`: adaptive context modelling with a binary range coder (LZMA's), no tables in the stream.

The array is read as planes of (..., C, H, W) (a 2-D array as (N, C) with 1x1 planes; 1-D as one
row). Each value u (zigzag for signed) is coded as:
- a zero flag, in the context of which of its left, upper, upper-left and upper-right neighbours are
  non-zero, and of its channel's zero rate so far (8 buckets);
- for a non-zero, its bit length m + 1 (m in 0..b-1) along a binary tree, in the context of the
  left and upper neighbours' bit lengths and of its channel's mean bit length so far;
- the two bits below the leading one, in the context of m and of how the neighbours compare;
- the remaining m - 2 bits raw, in a plain bitstream after the range coder's bytes.
Every probability starts at 1/2 and adapts (shift 5), so a chunk costs nothing up front; a chunk
that would not shrink is stored raw instead. Neighbours and channel statistics are taken within
the chunk (chunks are coded independently).

>>> import numpy as np
>>> from actzip.codecs import get
>>> a = np.maximum(np.random.default_rng(0).integers(-40, 60, (2, 4, 16, 16)), 0).astype(np.uint8)
>>> c = get("ctx")
>>> bool((c.decode(c.encode(a)) == a.ravel()).all())
True
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.cpython.unsafe.numbers import leading_zeros

from ..errors import CorruptStreamError
from .base import ChunkedCodec, Header, read_varint, register, unzigzag, write_varint, zigzag
from .bits import packed_bytes, padded, unzigzag_value, zigzag_value
from .raw import pack_values, unpack_values

PROB_BITS = 11
MOVE_BITS = 5
TOP = 1 << 24
ZERO_BUCKETS = 8
CHANNEL_CLASSES = 8
CAT_CLASSES = 10  # a neighbour's bit length, 0 (zero or absent) .. 9 (9 and longer, scaled at 16 bits)
TREE_NODES = 16  # nodes 1..15 of the bit-length tree (depth 3 up to 8 bits, 4 above)
RAW, CODED = 0, 1


@njit(cache=True, inline="always")
def _bit_length(u):
    return 64 - np.int64(leading_zeros(np.uint64(u)))


@njit(cache=True, inline="always")
def _cat_class(length, bits):
    """A neighbour's bit length as a context class 0..CAT_CLASSES-1."""
    if bits > 8:
        length = (length + 1) >> 1
    return min(length, CAT_CLASSES - 1)


@njit(cache=True, inline="always")
def _layout_step(x, y, c, width, height, channels):
    """Advance (x, y, c) by one value in (C, H, W) order."""
    x += 1
    if x == width:
        x = 0
        y += 1
        if y == height:
            y = 0
            c += 1
            if c == channels:
                c = 0
    return x, y, c


@njit(cache=True, inline="always")
def _channel_classes(c, ch_zero, ch_total, ch_len_sum, ch_nonzero, bits):
    """(zero-rate bucket, mean bit-length class) of channel c from its statistics so far. Two
    divisions, so callers refresh them per plane and every REFRESH values, not per value."""
    zb = min((ch_zero[c] * ZERO_BUCKETS + ZERO_BUCKETS // 2) // (ch_total[c] + 1), ZERO_BUCKETS - 1)
    mean = ch_len_sum[c] // ch_nonzero[c] if ch_nonzero[c] else 0
    return zb, min(mean >> 1 if bits > 8 else mean, CHANNEL_CLASSES - 1)


REFRESH = 256


@njit(cache=True, inline="always")
def _contexts(left, up, upleft, upright, zb, ch_class, bits):
    """(zero-flag context, bit-length context base) from the neighbours' bit lengths and the
    channel's classes: all things the decoder already knows."""
    pattern = (left > 0) * 8 + (up > 0) * 4 + (upleft > 0) * 2 + (upright > 0)
    zero_ctx = zb * 16 + pattern
    len_ctx = ((_cat_class(left, bits) * CAT_CLASSES + _cat_class(up, bits)) * CHANNEL_CLASSES + ch_class) * TREE_NODES
    return zero_ctx, len_ctx


@njit(cache=True, inline="always")
def _mantissa_ctx(m, near):
    """Context of the bits below the leading one: m, and the nearest neighbours' length vs ours."""
    trend = 0 if near == 0 else (1 if near < m + 1 else (2 if near == m + 1 else 3))
    return (m * 4 + trend) * 3


@njit(cache=True, inline="always")
def _shift_low(low, cache, cache_size, out, o):
    """Emit the settled top byte of `low` (LZMA's carry-propagating byte output)."""
    if low < 0xFF000000 or low >= 0x100000000:
        carry = low >> 32
        temp = cache
        while True:
            if o < out.shape[0]:
                out[o] = (temp + carry) & 0xFF
            o += 1
            temp = 0xFF
            cache_size -= 1
            if cache_size == 0:
                break
        cache = (low >> 24) & 0xFF
    cache_size += 1
    low = (low & 0x00FFFFFF) << 8
    return low, cache, cache_size, o


@njit(cache=True, inline="always")
def _tree_depth(bits):
    return 3 if bits <= 8 else 4


# One probability array, in three sections: zero flags, bit-length tree nodes, mantissa bits.
ZERO_PROBS = ZERO_BUCKETS * 16
LEN_PROBS = CAT_CLASSES * CAT_CLASSES * CHANNEL_CLASSES * TREE_NODES
MAN_PROBS = 16 * 4 * 3
N_PROBS = ZERO_PROBS + LEN_PROBS + MAN_PROBS


@njit(cache=True, nogil=True)
def _encode(a, signed, bits, width, height, channels, x0, y0, c0, use_neighbours, use_channel, out, raw_out):
    """Range-code `a` into `out` and its raw mantissa bits into `raw_out`; returns (bytes, raw bits),
    with bytes > out.size when `out` was too small (the chunk does not compress).

    Each value is a short list of binary decisions (zero flag, bit-length tree, two mantissa bits),
    all coded at one place in the loop: numba compiles that far better than a helper per decision."""
    n = a.shape[0]
    probs = np.full(N_PROBS, 1 << (PROB_BITS - 1), np.uint16)  # small, to stay in L1
    lengths = np.zeros(n, np.uint8)
    ch_zero = np.zeros(channels, np.int64)
    ch_total = np.zeros(channels, np.int64)
    ch_len_sum = np.zeros(channels, np.int64)
    ch_nonzero = np.zeros(channels, np.int64)
    depth = _tree_depth(bits)
    low, rng, cache, cache_size, o = np.int64(0), np.int64(0xFFFFFFFF), np.int64(0), np.int64(1), 0
    racc, rnacc, ro = np.uint64(0), 0, 0
    x, y, c = x0, y0, c0
    zb, ch_class = 0, 0
    for i in range(n):
        if use_channel and (i == 0 or (x == 0 and y == 0) or i % REFRESH == 0):
            zb, ch_class = _channel_classes(c, ch_zero, ch_total, ch_len_sum, ch_nonzero, bits)
        left = up = upleft = upright = 0  # bit lengths of the causal neighbours (0 outside the chunk)
        if use_neighbours and x > 0 and i >= 1:
            left = np.int64(lengths[i - 1])
        if use_neighbours and y > 0 and i >= width + 1:
            up = np.int64(lengths[i - width])
            if x > 0:
                upleft = np.int64(lengths[i - width - 1])
            if x + 1 < width:
                upright = np.int64(lengths[i - width + 1])
        zero_ctx, len_ctx = _contexts(left, up, upleft, upright, zb, ch_class, bits)
        u = zigzag_value(a[i], signed)
        length = _bit_length(u)
        lengths[i] = length
        m = length - 1
        man_ctx = ZERO_PROBS + LEN_PROBS + _mantissa_ctx(m, max(left, up)) if u else 0
        first = (u >> (m - 1)) & 1 if m >= 1 else 0
        decisions = 1 + (depth + min(m, 2) if u else 0)
        node = 1
        for step in range(decisions):
            if step == 0:
                idx, bit = zero_ctx, 1 if u else 0
            elif step <= depth:
                bit = (m >> (depth - step)) & 1
                idx = ZERO_PROBS + len_ctx + node
                node = 2 * node + bit
            elif step == depth + 1:
                idx, bit = man_ctx, first
            else:
                idx, bit = man_ctx + 1 + first, (u >> (m - 2)) & 1
            p = np.int64(probs[idx])
            bound = (rng >> PROB_BITS) * p
            if bit == 0:
                rng = bound
                probs[idx] = p + (((1 << PROB_BITS) - p) >> MOVE_BITS)
            else:
                low += bound
                rng -= bound
                probs[idx] = p - (p >> MOVE_BITS)
            while rng < TOP:
                rng <<= 8
                low, cache, cache_size, o = _shift_low(low, cache, cache_size, out, o)
        if m > 2:  # the bits below the two modelled ones go raw
            racc = (racc << np.uint64(m - 2)) | np.uint64(u & ((1 << (m - 2)) - 1))
            rnacc += m - 2
            while rnacc >= 8:
                rnacc -= 8
                raw_out[ro] = np.uint8((racc >> np.uint64(rnacc)) & np.uint64(0xFF))
                ro += 1
        if o > out.shape[0]:
            return o, 0
        ch_total[c] += 1
        if u == 0:
            ch_zero[c] += 1
        else:
            ch_len_sum[c] += length
            ch_nonzero[c] += 1
        x, y, c = _layout_step(x, y, c, width, height, channels)
    for _ in range(5):
        low, cache, cache_size, o = _shift_low(low, cache, cache_size, out, o)
    if rnacc:
        raw_out[ro] = np.uint8((racc << np.uint64(8 - rnacc)) & np.uint64(0xFF))
    return o, ro * 8 + rnacc


@njit(cache=True, nogil=True)
def _decode(buf, n_bytes, raw, raw_bits, n, signed, bits, width, height, channels, x0, y0, c0, use_neighbours,
            use_channel, out):
    """Inverse of _encode into `out`; returns 0, or -1 if the stream does not decode using exactly
    its bytes (truncated, damaged, or with garbage after it)."""
    probs = np.full(N_PROBS, 1 << (PROB_BITS - 1), np.uint16)  # small, to stay in L1
    lengths = np.zeros(n, np.uint8)
    ch_zero = np.zeros(channels, np.int64)
    ch_total = np.zeros(channels, np.int64)
    ch_len_sum = np.zeros(channels, np.int64)
    ch_nonzero = np.zeros(channels, np.int64)
    depth = _tree_depth(bits)
    if n_bytes < 5 or buf[0] != 0:  # the encoder's first byte is always 0
        return -1
    code = np.int64(0)
    for j in range(1, 5):
        code = (code << 8) | buf[j]
    q = 5
    rng = np.int64(0xFFFFFFFF)
    rp, racc, rnacc = 0, np.uint64(0), 0
    x, y, c = x0, y0, c0
    zb, ch_class = 0, 0
    for i in range(n):
        if use_channel and (i == 0 or (x == 0 and y == 0) or i % REFRESH == 0):
            zb, ch_class = _channel_classes(c, ch_zero, ch_total, ch_len_sum, ch_nonzero, bits)
        left = up = upleft = upright = 0  # bit lengths of the causal neighbours (0 outside the chunk)
        if use_neighbours and x > 0 and i >= 1:
            left = np.int64(lengths[i - 1])
        if use_neighbours and y > 0 and i >= width + 1:
            up = np.int64(lengths[i - width])
            if x > 0:
                upleft = np.int64(lengths[i - width - 1])
            if x + 1 < width:
                upright = np.int64(lengths[i - width + 1])
        zero_ctx, len_ctx = _contexts(left, up, upleft, upright, zb, ch_class, bits)
        near = max(left, up)
        u, m, node, first, man_ctx = 0, -1, 1, 0, 0
        step = 0
        while True:
            if step == 0:
                idx = zero_ctx
            elif step <= depth:
                idx = ZERO_PROBS + len_ctx + node
            elif step == depth + 1:
                idx = man_ctx
            else:
                idx = man_ctx + 1 + first
            p = np.int64(probs[idx])
            bound = (rng >> PROB_BITS) * p
            if code < bound:
                rng = bound
                probs[idx] = p + (((1 << PROB_BITS) - p) >> MOVE_BITS)
                bit = 0
            else:
                code -= bound
                rng -= bound
                probs[idx] = p - (p >> MOVE_BITS)
                bit = 1
            while rng < TOP:
                rng <<= 8
                code = ((code << 8) | buf[q]) & 0xFFFFFFFF
                q += 1
            if step == 0:
                if bit == 0:
                    break
            elif step <= depth:
                node = 2 * node + bit
                if step == depth:
                    m = node - (1 << depth)
                    if m >= bits:
                        return -1
                    u = 1 << m
                    man_ctx = ZERO_PROBS + LEN_PROBS + _mantissa_ctx(m, near)
                    if m == 0:
                        break
            elif step == depth + 1:
                first = bit
                u |= bit << (m - 1)
                if m == 1:
                    break
            else:
                u |= bit << (m - 2)
                break
            step += 1
        if m > 2:
            while rnacc <= 56:
                racc |= np.uint64(raw[rp]) << np.uint64(56 - rnacc)
                rp += 1
                rnacc += 8
            u |= np.int64(racc >> np.uint64(64 - (m - 2)))
            racc <<= np.uint64(m - 2)
            rnacc -= m - 2
            if 8 * rp - rnacc > raw_bits:
                return -1
        if q > n_bytes:
            return -1
        length = m + 1
        lengths[i] = length
        out[i] = unzigzag_value(u, signed)
        ch_total[c] += 1
        if u == 0:
            ch_zero[c] += 1
        else:
            ch_len_sum[c] += length
            ch_nonzero[c] += 1
        x, y, c = _layout_step(x, y, c, width, height, channels)
    if q != n_bytes or 8 * rp - rnacc != raw_bits:
        return -1
    return 0


def layout(shape: tuple) -> tuple[int, int, int]:
    """(channels, height, width) of the planes an array of this shape is read as."""
    if len(shape) >= 3:
        return int(shape[-3]), int(shape[-2]), int(shape[-1])
    if len(shape) == 2:
        return int(shape[-1]), 1, 1
    return 1, 1, max(1, int(np.prod(shape)))


@register
class Context(ChunkedCodec):
    """Adaptive context modelling (neighbours, channel statistics) with a binary range coder."""

    codec_id = "ctx"
    values_per_bit = 64.0  # an adaptive coder can go far below a bit per value, not below 1/64

    def __init__(self, bits: int | None = None, neighbours: bool = True, channel: bool = False):
        """neighbours / channel: use the causal neighbours / the channel statistics as context
        (switching them off measures what each buys; on Lite0 the channel statistics add nothing
        once the neighbours are used, so they are off by default)."""
        super().__init__(bits)
        self.neighbours = bool(neighbours)
        self.channel = bool(channel)

    def _params(self):
        return {"bits": self.bits, "neighbours": self.neighbours, "channel": self.channel}

    def _encode(self, a, bits):
        return self._encode_chunk(a, bits, a.shape, 0)

    def _encode_chunk(self, a, bits, shape, start):
        channels, height, width = layout(shape)
        plane = height * width
        c0, rest = divmod(start, plane)
        c0 %= channels
        y0, x0 = divmod(rest, width)
        flags = (1 if self.neighbours else 0) | (2 if self.channel else 0)
        params = (bytes([flags]) + write_varint(channels) + write_varint(height) + write_varint(width)
                  + write_varint(start % (plane * channels)))
        raw_size = packed_bytes(a.size * bits)
        out = np.zeros(raw_size, np.uint8)
        raw_out = np.zeros(packed_bytes(a.size * max(bits - 3, 0)) + 1, np.uint8)
        n_bytes, raw_bits = _encode(a, a.dtype.kind == "i", bits, width, height, channels, x0, y0, c0,
                                    self.neighbours, self.channel, out, raw_out)
        coded = n_bytes <= out.size and n_bytes + packed_bytes(raw_bits) < raw_size
        if not coded:
            return bytes([RAW]) + pack_values(zigzag(a), bits)
        return (bytes([CODED]) + params + write_varint(n_bytes) + write_varint(raw_bits) + out[:n_bytes].tobytes()
                + raw_out[:packed_bytes(raw_bits)].tobytes())

    def _decode(self, h: Header, payload: bytes):
        if not payload:
            raise CorruptStreamError("ctx: empty chunk")
        if payload[0] == RAW:
            return unzigzag(unpack_values(payload, 1, h.n, h.bits, "ctx"), h.dtype)
        if payload[0] != CODED:
            raise CorruptStreamError(f"ctx: unknown chunk mode {payload[0]}")
        if len(payload) < 2 or payload[1] > 3:
            raise CorruptStreamError("ctx: bad context flags")
        use_neighbours, use_channel = bool(payload[1] & 1), bool(payload[1] & 2)
        pos = 2
        channels, pos = read_varint(payload, pos, "channels")
        height, pos = read_varint(payload, pos, "height")
        width, pos = read_varint(payload, pos, "width")
        offset, pos = read_varint(payload, pos, "offset")
        n_bytes, pos = read_varint(payload, pos, "coded length")
        raw_bits, pos = read_varint(payload, pos, "raw bit count")
        plane = height * width
        if not (0 < channels <= 1 << 24 and 0 < plane <= 1 << 28 and offset < plane * channels):
            raise CorruptStreamError("ctx: bad layout")
        if pos + n_bytes + packed_bytes(raw_bits) != len(payload):
            raise CorruptStreamError("ctx: section lengths do not match the chunk")
        c0, rest = divmod(offset, plane)
        y0, x0 = divmod(rest, width)
        out = np.zeros(h.n, h.dtype)
        coded = padded(payload[pos:pos + n_bytes])
        raw = padded(payload, pos + n_bytes)
        if _decode(coded, n_bytes, raw, raw_bits, h.n, h.signed, h.bits, width, height, channels, x0, y0, c0,
                   use_neighbours, use_channel, out) < 0:
            raise CorruptStreamError("ctx: malformed or truncated stream")
        return out

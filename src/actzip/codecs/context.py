"""`ctx`: adaptive context modelling with a binary range coder (LZMA's), no tables in the stream.

The array is read as planes of (..., C, H, W) (a 2-D array as (N, C) with 1x1 planes; 1-D as one
row). Up to 8 bits by default, a chunk is coded by the context-mixing model of `mixing.py` (its
flags byte MIXING); otherwise by the single-context model of this module, in which each value u
(zigzag for signed) is coded as:
- a zero flag, in the context of which of its left, upper, upper-left and upper-right neighbours are
  non-zero, and of its channel's zero rate so far (8 buckets);
- for a non-zero whose left neighbour is non-zero, a repeat flag (equal to the left neighbour), in
  the context of whether the left one repeated its own left and whether the upper one equals it.
  Flat regions repeat exactly: on Fashion-MNIST's black background a conv's output is one constant
  per channel, and there a 16-bit code costs 13 bits where the flag costs a fraction of one;
- for a non-zero that is no repeat and whose left and upper neighbours are non-zero: the residual
  from LOCO-I's median edge predictor (zigzag), as its bit length along a binary tree in the
  context of the local activity, then the two bits below its leading one, then the rest raw.
  Where a map is non-zero it is smooth enough to save about a bit per predicted value at 16 bits,
  where the low bits are noise (1-3 % of the stream on Lite0 and Fashion-MNIST maps);
- for any other non-zero, its bit length m + 1 (m in 0..b-1) along a binary tree, in the context
  of the left and upper neighbours' bit lengths and of its channel's mean bit length so far; the
  two bits below the leading one, in the context of m and of how the neighbours compare; the
  remaining m - 2 bits raw, in a plain bitstream after the range coder's bytes.
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
from .bits import pack_values, packed_bytes, padded, unpack_values, unzigzag_value, zigzag_value
from . import mixing
from .layout import next_position, plane_shape

PROB_BITS = 11
MOVE_BITS = 5
TOP = 1 << 24
ZERO_BUCKETS = 8
CHANNEL_CLASSES = 8
CAT_CLASSES = 10  # a neighbour's bit length, 0 (zero or absent) .. 9 (9 and longer, scaled at 16 bits)
TREE_NODES = 16  # nodes 1..15 of the bit-length tree (depth 3 up to 8 bits, 4 above)
RAW, CODED = 0, 1
MIXING = 16  # the flags byte of a chunk coded by the context-mixing model


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


# One probability array, in sections: zero flags, bit-length tree nodes, mantissa bits, repeat
# flags, residual bit-length tree nodes, residual mantissa bits.
ZERO_PROBS = ZERO_BUCKETS * 16
LEN_PROBS = CAT_CLASSES * CAT_CLASSES * CHANNEL_CLASSES * TREE_NODES
MAN_PROBS = 16 * 4 * 3
REP_PROBS = 4
RES_DEPTH = 5  # a residual's zigzag has up to bits + 1 bits: lengths 0..31 cover 16-bit codes
RES_PROBS = CAT_CLASSES * (1 << RES_DEPTH)
RES_MAN_PROBS = 32 * 3
MAN_BASE = ZERO_PROBS + LEN_PROBS
REP_BASE = MAN_BASE + MAN_PROBS
RES_BASE = REP_BASE + REP_PROBS
RES_MAN_BASE = RES_BASE + RES_PROBS
N_PROBS = RES_MAN_BASE + RES_MAN_PROBS
MAX_DECISIONS = 2 + RES_DEPTH + 2  # zero flag, repeat flag, the deeper tree, two mantissa bits


@njit(cache=True, inline="always")
def _repeat_ctx(v, i, x, y, width, use_repeats):
    """The repeat flag's probability index for the value at i, or -1 if it has no repeat flag (its
    left neighbour is absent or zero). `v` holds the values so far."""
    if not use_repeats or x == 0 or i < 1 or v[i - 1] == 0:
        return -1
    run = 1 if x >= 2 and i >= 2 and v[i - 2] == v[i - 1] else 0
    flat = 1 if y > 0 and i >= width and v[i - width] == v[i - 1] else 0
    return REP_BASE + run * 2 + flat


@njit(cache=True, inline="always")
def _prediction(v, i, x, y, width, bits, use_prediction):
    """(predicted value, residual tree base) for the value at i, or (0, -1) if it is not predicted
    (its left or upper neighbour is absent or zero). The predictor is LOCO-I's median edge detector
    on the values; the context is the local activity |left - upleft| + |up - upleft|."""
    if not use_prediction or x == 0 or y == 0 or i < width + 1:
        return np.int64(0), -1
    left, up, upleft = np.int64(v[i - 1]), np.int64(v[i - width]), np.int64(v[i - width - 1])
    if left == 0 or up == 0:
        return np.int64(0), -1
    lo, hi = min(left, up), max(left, up)
    pred = lo if upleft >= hi else (hi if upleft <= lo else left + up - upleft)
    activity = _bit_length(abs(left - upleft) + abs(up - upleft))
    return pred, RES_BASE + _cat_class(activity, bits) * (1 << RES_DEPTH)


@njit(cache=True, nogil=True)
def _encode(a, signed, bits, width, height, channels, x0, y0, c0, use_neighbours, use_channel, use_repeats,
            use_prediction, out, raw_out):
    """Range-code `a` into `out` and its raw mantissa bits into `raw_out`; returns (bytes, raw bits),
    with bytes > out.size when `out` was too small (the chunk does not compress).

    Each value becomes a short list of binary decisions (zero flag, repeat flag, bit-length tree, two
    mantissa bits), all coded at one place in the loop: numba compiles that far better than a helper
    per decision."""
    n = a.shape[0]
    probs = np.full(N_PROBS, 1 << (PROB_BITS - 1), np.uint16)  # small, to stay in L1
    lengths = np.zeros(n, np.uint8)
    ch_zero = np.zeros(channels, np.int64)
    ch_total = np.zeros(channels, np.int64)
    ch_len_sum = np.zeros(channels, np.int64)
    ch_nonzero = np.zeros(channels, np.int64)
    depth = _tree_depth(bits)
    decision_idx = np.zeros(MAX_DECISIONS, np.int64)
    decision_bit = np.zeros(MAX_DECISIONS, np.int64)
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
        decision_idx[0], decision_bit[0] = zero_ctx, 1 if u else 0
        nd = 1
        mantissa_bits, w = 0, np.int64(0)
        if u:
            rep_idx = _repeat_ctx(a, i, x, y, width, use_repeats)
            repeat = rep_idx >= 0 and a[i] == a[i - 1]
            if rep_idx >= 0:
                decision_idx[nd], decision_bit[nd] = rep_idx, 1 if repeat else 0
                nd += 1
            if not repeat:
                pred, res_base = _prediction(a, i, x, y, width, bits, use_prediction)
                if res_base >= 0:  # the residual's bit length (0 for an exact prediction), then its bits
                    w = zigzag_value(np.int64(a[i]) - pred, True)
                    symbol, tree_depth, tree_base = _bit_length(w), RES_DEPTH, res_base
                    mantissa_bits = symbol - 1
                    man_base = RES_MAN_BASE + 3 * max(mantissa_bits, 0)
                else:  # the value's bit length (at least 1), then its bits
                    w = u
                    symbol, tree_depth, tree_base = length - 1, depth, ZERO_PROBS + len_ctx
                    mantissa_bits = symbol
                    man_base = MAN_BASE + _mantissa_ctx(symbol, max(left, up))
                node = 1
                for t in range(tree_depth):
                    bit = (symbol >> (tree_depth - 1 - t)) & 1
                    decision_idx[nd], decision_bit[nd] = tree_base + node, bit
                    nd += 1
                    node = 2 * node + bit
                if mantissa_bits >= 1:
                    first = (w >> (mantissa_bits - 1)) & 1
                    decision_idx[nd], decision_bit[nd] = man_base, first
                    nd += 1
                    if mantissa_bits >= 2:
                        decision_idx[nd], decision_bit[nd] = man_base + 1 + first, (w >> (mantissa_bits - 2)) & 1
                        nd += 1
        for k in range(nd):
            idx, bit = decision_idx[k], decision_bit[k]
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
        if mantissa_bits > 2:  # the bits below the two modelled ones go raw
            racc = (racc << np.uint64(mantissa_bits - 2)) | np.uint64(w & ((1 << (mantissa_bits - 2)) - 1))
            rnacc += mantissa_bits - 2
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
        x, y, c = next_position(x, y, c, width, height, channels)
    for _ in range(5):
        low, cache, cache_size, o = _shift_low(low, cache, cache_size, out, o)
    if rnacc:
        raw_out[ro] = np.uint8((racc << np.uint64(8 - rnacc)) & np.uint64(0xFF))
    return o, ro * 8 + rnacc


@njit(cache=True, inline="always")
def _decode_bit(probs, idx, code, rng, buf, q):
    """One binary decision: (bit, code, rng, q)."""
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
    return bit, code, rng, q


@njit(cache=True, nogil=True)
def _decode(buf, n_bytes, raw, raw_bits, n, signed, bits, width, height, channels, x0, y0, c0, use_neighbours,
            use_channel, use_repeats, use_prediction, out):
    """Inverse of _encode into `out`; returns 0, or -1 if the stream does not decode using exactly
    its bytes (truncated, damaged, or with garbage after it). `buf` is padded, so reading past
    n_bytes is safe; the check on q afterwards catches it."""
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
        nonzero, code, rng, q = _decode_bit(probs, zero_ctx, code, rng, buf, q)
        value = np.int64(0)
        if nonzero:
            rep_idx = _repeat_ctx(out, i, x, y, width, use_repeats)
            repeat = 0
            if rep_idx >= 0:
                repeat, code, rng, q = _decode_bit(probs, rep_idx, code, rng, buf, q)
            if repeat:
                value = np.int64(out[i - 1])
            else:
                pred, res_base = _prediction(out, i, x, y, width, bits, use_prediction)
                if res_base >= 0:
                    tree_depth, tree_base = RES_DEPTH, res_base
                else:
                    tree_depth, tree_base = depth, ZERO_PROBS + len_ctx
                node = 1
                for _ in range(tree_depth):
                    bit, code, rng, q = _decode_bit(probs, tree_base + node, code, rng, buf, q)
                    node = 2 * node + bit
                symbol = node - (1 << tree_depth)
                if res_base >= 0:
                    mantissa_bits = symbol - 1
                    man_base = RES_MAN_BASE + 3 * max(mantissa_bits, 0)
                    if symbol > bits + 1:  # the residual of two b-bit codes fits in b + 1 bits
                        return -1
                else:
                    mantissa_bits = symbol
                    man_base = MAN_BASE + _mantissa_ctx(symbol, max(left, up))
                    if symbol >= bits:
                        return -1
                w = np.int64(1) << mantissa_bits if mantissa_bits >= 0 else np.int64(0)
                if mantissa_bits >= 1:
                    first, code, rng, q = _decode_bit(probs, man_base, code, rng, buf, q)
                    w |= first << (mantissa_bits - 1)
                    if mantissa_bits >= 2:
                        bit, code, rng, q = _decode_bit(probs, man_base + 1 + first, code, rng, buf, q)
                        w |= bit << (mantissa_bits - 2)
                if mantissa_bits > 2:
                    while rnacc <= 56:
                        racc |= np.uint64(raw[rp]) << np.uint64(56 - rnacc)
                        rp += 1
                        rnacc += 8
                    w |= np.int64(racc >> np.uint64(64 - (mantissa_bits - 2)))
                    racc <<= np.uint64(mantissa_bits - 2)
                    rnacc -= mantissa_bits - 2
                    if 8 * rp - rnacc > raw_bits:
                        return -1
                value = pred + unzigzag_value(w, True) if res_base >= 0 else unzigzag_value(w, signed)
        if q > n_bytes:
            return -1
        u = zigzag_value(value, signed)
        length = _bit_length(u)
        if nonzero and (u == 0 or length > bits):  # a residual that lands on zero or out of range
            return -1
        lengths[i] = length
        out[i] = value
        ch_total[c] += 1
        if u == 0:
            ch_zero[c] += 1
        else:
            ch_len_sum[c] += length
            ch_nonzero[c] += 1
        x, y, c = next_position(x, y, c, width, height, channels)
    if q != n_bytes or 8 * rp - rnacc != raw_bits:
        return -1
    return 0


@register
class Context(ChunkedCodec):
    """Adaptive context modelling (neighbours, channel statistics) with a binary range coder.

    Parameters:
        bits: the values' bit width (None: taken from each input).
        neighbours: use the causal neighbours as context.
        channel: use the channel statistics as context.
        repeats: code a repeat of the left neighbour with one flag.
        prediction: code the residual from the median predictor where the left and upper
            neighbours are non-zero (None: above 8 bits).
        mixing: code with the context-mixing model instead, which ignores the options above
            (None: up to 8 bits).
    """

    codec_id = "ctx"
    # a decision's probability is at most 4095/4096 in both models (the mixing model's 12-bit
    # squash), so a value costs at least log2(4096/4095) bits: fewer than 4096 values per bit
    values_per_bit = 4096.0

    def __init__(self, bits: int | None = None, neighbours: bool = True, channel: bool = False,
                 repeats: bool = True, prediction: bool | None = None, mixing: bool | None = None):
        """mixing: code with the context-mixing model (`mixing.py`) instead of the single-context
        one; None: up to 8 bits, where it codes Lite0's maps 5 % smaller at a quarter of the single
        model's speed. Above 8 bits it gains 0.2 % at a fifth of the speed, so it runs there only
        when asked for (True). The options below are the single model's.
        neighbours / channel: use the causal neighbours / the channel statistics as context;
        repeats / prediction: code a repeat of the left neighbour with one flag / code the residual
        from the median predictor where the left and upper neighbours are non-zero. Switching them
        off measures what each buys. Defaults from Lite0's maps: the channel statistics add nothing
        once the neighbours are used, so they are off; the predictor (None: above 8 bits) gains
        0.9 % at 16 bits but only 0.3 % at 8, where it would cost a fifth of the speed."""
        super().__init__(bits)
        self.neighbours = bool(neighbours)
        self.channel = bool(channel)
        self.repeats = bool(repeats)
        self.prediction = None if prediction is None else bool(prediction)
        self.mixing = None if mixing is None else bool(mixing)

    def _params(self):
        return {"bits": self.bits, "neighbours": self.neighbours, "channel": self.channel, "repeats": self.repeats,
                "prediction": self.prediction, "mixing": self.mixing}

    def _encode(self, a, bits):
        return self._encode_chunk(a, bits, a.shape, 0)

    def _encode_chunk(self, a, bits, shape, start):
        channels, height, width = plane_shape(shape)
        plane = height * width
        c0, rest = divmod(start, plane)
        c0 %= channels
        y0, x0 = divmod(rest, width)
        predict = bits > 8 if self.prediction is None else self.prediction
        mix = bits <= 8 if self.mixing is None else self.mixing
        flags = MIXING if mix else (self.neighbours * 1) | (self.channel * 2) | (self.repeats * 4) | (predict * 8)
        params = (bytes([flags]) + write_varint(channels) + write_varint(height) + write_varint(width)
                  + write_varint(start % (plane * channels)))
        raw_size = packed_bytes(a.size * bits)
        out = np.zeros(raw_size, np.uint8)
        if mix:
            n_bytes, raw_bits = mixing.code(a.astype(np.int64), False, a.dtype.kind == "i", bits, width, height,
                                            channels, x0, y0, c0, out, 0), 0
            raw_out = out[:0]
        else:
            raw_out = np.zeros(packed_bytes(a.size * max(bits - 2, 0)) + 1, np.uint8)  # a residual's raw bits
            n_bytes, raw_bits = _encode(a, a.dtype.kind == "i", bits, width, height, channels, x0, y0, c0,
                                        self.neighbours, self.channel, self.repeats, predict, out, raw_out)
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
        if len(payload) < 2 or payload[1] > 15 and payload[1] != MIXING:
            raise CorruptStreamError("ctx: bad context flags")
        use_neighbours, use_channel, use_repeats, use_prediction = (bool(payload[1] & f) for f in (1, 2, 4, 8))
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
        if payload[1] == MIXING:
            values = np.zeros(h.n, np.int64)  # one type for every dtype: numba compiles the loop once
            if raw_bits or mixing.code(values, True, h.signed, h.bits, width, height, channels, x0, y0, c0, coded,
                                       n_bytes) < 0:
                raise CorruptStreamError("ctx: malformed or truncated stream")
            return values.astype(h.dtype)
        raw = padded(payload, pos + n_bytes)
        if _decode(coded, n_bytes, raw, raw_bits, h.n, h.signed, h.bits, width, height, channels, x0, y0, c0,
                   use_neighbours, use_channel, use_repeats, use_prediction, out) < 0:
            raise CorruptStreamError("ctx: malformed or truncated stream")
        return out

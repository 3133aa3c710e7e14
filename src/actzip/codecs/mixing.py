"""The context-mixing model of `ctx` (its default up to 8 bits): several context models per binary
decision, mixed in the logistic domain, coded with a binary arithmetic coder (numba).

A value u (zigzag for signed) with bit length l is coded as decisions:
- whether it is zero; if not, l - 1 along a binary tree of 3 levels (up to 8 bits) or 4, each node
  a decision (unary steps instead measured 0.3 % larger and 20 % slower);
- then its bits below the leading one, most significant first: the first MODELLED_BITS of them
  modelled, the rest coded at p = 1/2 (the low bits of 16-bit codes are noise, and cost time).
Each decision's probability comes from several adaptive models, each a table of probabilities
indexed by a context the decoder also knows. The four models of the length see the bit lengths of
the causal neighbours (left, up, up-left, up-right, two to the left and two up), of the same pixel
in the previous plane (the previous channel: activation maps repeat their spatial layout across
channels, which image coders never look at), the length of LOCO-I's median prediction and the
local activity, and the channel's zero rate and mean length so far. The three models of the bits
below the leading one see the bits coded so far, and where the median prediction, the left, upper
and previous-plane values lie against them: the one that sees the prediction buys the most (2.5 %
at 8 bits, benchmarks/ctx_mixing.py). Measured on Lite0's maps and left out for the time they
cost: a length model of the channel itself (0.07 % smaller streams for 11 % more time), one of the
up-left, up-right and second-left lengths (0.03 %), a secondary estimation after the mixer (0.17 %
for 17 %).

The models' probabilities are mixed as in context-mixing coders (lpaq): each is stretched
(ln(p / (1 - p))), a weighted sum of them is squashed back, and the weights, one set per kind of
decision, learn online to reduce the coding cost. Every table starts flat and adapts; the
counters adapt fast at first (rate 1/(n + 2) for their n-th update, down to 1/129), and all
arithmetic is integer, so encoder and decoder agree on every machine.

The coder is the carry-less 32-bit binary arithmetic coder of lpaq: a decision with probability p
(12 bits) of a 1 narrows [x1, x2], and the leading bytes that x1 and x2 share are written out.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.cpython.unsafe.numbers import leading_zeros

from .layout import next_position


# squash(d) = 1 / (1 + exp(-d / 256)) in 12 bits, for d in [-2047, 2047], interpolated between its
# values at every 128th d (lpaq's table): integers only, so that every machine builds the same
# tables (a libm's exp may round differently); stretch is its inverse, ln(p / (1 - p)) * 256
_KNOTS = np.array([1, 2, 3, 6, 10, 16, 27, 45, 73, 120, 194, 310, 488, 747, 1101, 1546, 2047, 2549, 2994, 3348,
                   3607, 3785, 3901, 3975, 4024, 4050, 4068, 4079, 4085, 4089, 4092, 4093, 4094], np.int64)
_D = np.arange(-2047, 2048)
_W = _D & 127
SQUASH = ((_KNOTS[(_D >> 7) + 16] * (128 - _W) + _KNOTS[(_D >> 7) + 17] * _W + 64) >> 7).astype(np.int32)
STRETCH = (np.searchsorted(SQUASH, np.arange(4096), side="left").clip(0, 4094) - 2047).astype(np.int32)
RECIP = np.array([65536 // (n + 2) for n in range(256)], np.int32)  # the counters' rates
LIMIT = 127  # a counter's rate stops falling at 1 / (LIMIT + 2)

# model tables, one probability (16 bits) and update count (8 bits) each, in sections
LEN_CTX = 16  # the length's decisions: the zero flag, then the tree's nodes 1..15
CLASSES = 10  # a neighbour's length as a class (halved above 8 bits)
# the length's models, each (decision k, ...): L0 (left, up, whether up-left and up-right are
# non-zero), L1 (previous plane, non-zero neighbours, channel mean length), L2 (median prediction,
# activity, two up), L3 (channel zero rate, left, channel mean length)
L0, L1 = 0, LEN_CTX * CLASSES * CLASSES * 4
L2 = L1 + LEN_CTX * CLASSES * 7 * 16
L3 = L2 + LEN_CTX * CLASSES * 16 * CLASSES
# the bits' models, each (length, position, ...): B0 (the bits so far), B1 (prediction, left and up
# against the bits so far), B2 (previous plane against the bits so far, channel mean length)
B0 = L3 + LEN_CTX * 9 * CLASSES * 16
B1 = B0 + 16 * 16 * 16
B2 = B1 + 16 * 16 * 343
N_PROBS = B2 + 16 * 16 * 7 * 16
LEN_INPUTS, BIT_INPUTS = 4, 3
BIT_SHIFT = LEN_INPUTS  # `disabled`'s bits of the bits' models start here
STRIDES = np.array([CLASSES * CLASSES * 4, CLASSES * 7 * 16, CLASSES * 16 * CLASSES, 9 * CLASSES * 16])
N_WEIGHTS = 768  # weight sets: 512 for the length (decision, left), 256 for the bits (length, position)
LEARNING_SHIFT = 14
MODELLED_BITS = 6  # bits below the leading one that the models see; lower ones are coded at p = 1/2


@njit(cache=True, inline="always")
def _length(u):
    return 64 - np.int64(leading_zeros(np.uint64(u)))


@njit(cache=True, inline="always")
def _class(length, bits):
    return min((length + 1) >> 1 if bits > 8 else length, CLASSES - 1)


@njit(cache=True, inline="always")
def _against(v, j, partial):
    """Where v's bits from position j up lie against the bits so far with a 0 next: -3..3, + 3."""
    return max(-3, min(3, (v >> j) - (partial << 1))) + 3


@njit(cache=True, nogil=True)
def code(values, decoding, signed, bits, width, height, channels, x0, y0, c0, buf, n_bytes, disabled=0):
    """Encode `values` (int64) into `buf` (returns the bytes written, more than buf.size when it did
    not fit), or decode buf's first n_bytes into `values` (returns 0, or -1 for a stream that does not
    decode using exactly its bytes, or whose tree gives a length over `bits`). `buf` is padded when
    decoding. Both directions run this one loop, so that they model alike. `disabled` switches models
    off, bit m for the length's model Lm and bit BIT_SHIFT + m for the bits' Bm (streams are coded
    with all; benchmarks/ctx_mixing.py measures what each buys).

    Each decision is coded at one place in the loop: a helper per decision would pass the tables,
    which numba reference-counts at every call (measured 5x slower)."""
    n = values.shape[0]
    u = np.zeros(n, np.int64)  # the zigzag values so far
    models = np.full(N_PROBS, 32768 << 8, np.uint32)  # each: probability (16 bits) << 8 | updates (8 bits)
    weights = np.full((N_WEIGHTS, LEN_INPUTS), 1 << 14, np.int32)
    ctx = np.zeros(LEN_INPUTS, np.int64)
    base = np.zeros(LEN_INPUTS, np.int64)
    st = np.zeros(LEN_INPUTS, np.int64)
    ch_len = np.zeros(channels, np.int64)
    ch_nonzero = np.zeros(channels, np.int64)
    ch_total = np.zeros(channels, np.int64)
    x1, x2, xv = np.int64(0), np.int64(0xFFFFFFFF), np.int64(0)
    q = 0
    if decoding:
        for _ in range(4):
            xv = (xv << 8) | (np.int64(buf[q]) if q < n_bytes else 0)
            q += 1
    plane = width * height
    tree = 3 if bits <= 8 else 4  # levels of the length's tree
    bad = False  # a tree leaf past `bits` (a damaged stream)
    x, y, c = x0, y0, c0
    for i in range(n):
        left = u[i - 1] if x > 0 and i >= 1 else 0
        up = u[i - width] if y > 0 and i >= width else 0
        upleft = u[i - width - 1] if x > 0 and y > 0 and i >= width + 1 else 0
        upright = u[i - width + 1] if y > 0 and x + 1 < width and i >= width else 0
        leftleft = u[i - 2] if x > 1 and i >= 2 else 0
        upup = u[i - 2 * width] if y > 1 and i >= 2 * width else 0
        prev = u[i - plane] if i >= plane else 0
        cl, cu = _class(_length(left), bits), _class(_length(up), bits)
        lo, hi = min(left, up), max(left, up)
        pred = 0 if signed else (lo if upleft >= hi else (hi if upleft <= lo else left + up - upleft))
        activity = min(_length(abs(left - upleft) + abs(up - upleft) + abs(upright - up)), 15)
        around = (left > 0) + (up > 0) + (upleft > 0) + (upright > 0) + (leftleft > 0) + (upup > 0)
        mean = min((ch_len[c] * 2 // ch_nonzero[c]) // (2 if bits > 8 else 1), 15) if ch_nonzero[c] else 0
        zero_rate = ch_nonzero[c] * 8 // (ch_total[c] + 1) if ch_total[c] else 8
        # each length model's context but for the decision k, which adds k times its stride
        base[0] = L0 + (cl * CLASSES + cu) * 4 + (upleft > 0) * 2 + (upright > 0)
        base[1] = L1 + (_class(_length(prev), bits) * 7 + around) * 16 + mean
        base[2] = L2 + (_class(_length(pred), bits) * 16 + activity) * CLASSES + _class(_length(upup), bits)
        base[3] = L3 + (zero_rate * CLASSES + cl) * 16 + mean
        value = np.int64(0)
        if not decoding:
            v = np.int64(values[i])
            value = (v << 1) ^ (v >> 63) if signed else v
        length = _length(value)
        # decisions: the zero flag (node 0), the length's tree (nodes 1..), the bits below the leading one
        node, j, partial, in_bits, low = 0, 0, np.int64(1), False, False
        while True:
            if not in_bits:
                for m in range(LEN_INPUTS):
                    ctx[m] = base[m] + node * STRIDES[m]
                inputs, wsel = LEN_INPUTS, node * 32 + cl
                bit = (1 if length > 0 else 0) if node == 0 else ((length - 1) >> (tree - _length(node))) & 1
            elif length - 2 - j >= MODELLED_BITS:  # a low bit: p = 1/2, no model
                low = True
                bit = (value >> j) & 1
            else:
                mm, jj = min(length - 1, 15), min(j, 15)
                row = mm * 16 + jj
                ctx[0] = B0 + row * 16 + (partial if partial < 16 else 0)
                ctx[1] = B1 + ((row * 7 + _against(pred, j, partial)) * 7 + _against(left, j, partial)) * 7 \
                    + _against(up, j, partial)
                ctx[2] = B2 + (row * 7 + _against(prev, j, partial)) * 16 + mean
                inputs, wsel = BIT_INPUTS, 512 + row
                bit = (value >> j) & 1
            # mix the models' stretched probabilities: p1 = P(bit = 1), 12 bits (a low bit: 1/2)
            mixed = np.int64(2048)
            if not low:
                dot = np.int64(0)
                for m in range(inputs):
                    s = np.int64(STRETCH[np.int64(models[ctx[m]]) >> 12])
                    if disabled and (disabled >> (m + (BIT_SHIFT if in_bits else 0))) & 1:
                        s = 0
                    st[m] = s
                    dot += s * weights[wsel, m]
                mixed = np.int64(SQUASH[max(-2047, min(2047, dot >> 16)) + 2047])
            p1 = max(1, min(4095, mixed))
            xmid = x1 + ((x2 - x1) >> 12) * p1
            if decoding:
                bit = 1 if xv <= xmid else 0
            if bit:
                x2 = xmid
            else:
                x1 = xmid + 1
            while ((x1 ^ x2) & 0xFF000000) == 0:
                if decoding:
                    xv = ((xv << 8) & 0xFFFFFFFF) | (np.int64(buf[q]) if q < n_bytes else 0)
                elif q < buf.shape[0]:
                    buf[q] = x2 >> 24
                q += 1
                x1 = (x1 << 8) & 0xFFFFFFFF
                x2 = ((x2 << 8) & 0xFFFFFFFF) | 255
            # learn: the mixer's weights, the models' counters (nothing for a low bit)
            err = ((bit << 12) - mixed) * 14
            for m in range(0 if low else inputs):
                weights[wsel, m] += (st[m] * err) >> LEARNING_SHIFT
            for m in range(0 if low else inputs):
                h = ctx[m]
                state = np.int64(models[h])
                seen, p = state & 255, state >> 8
                p += (((bit << 16) - bit - p) * RECIP[seen]) >> 16
                models[h] = (p << 8) | (seen + (seen < LIMIT))
            # the next decision: after the zero flag the tree, after the tree's leaf the bits
            if not in_bits:
                if node == 0:
                    if not bit:
                        break
                    node = 1
                    continue
                node = 2 * node + bit
                if node < 1 << tree:  # not yet a leaf
                    continue
                length = node - (1 << tree) + 1
                if length > bits:
                    bad = True
                    break
                if length < 2:
                    break
                in_bits, j = True, length - 2
                continue
            partial = (partial << 1) | bit
            j -= 1
            if j < 0:
                break
        if decoding:
            value = partial if length else 0
            values[i] = (value >> 1) ^ -(value & 1) if signed else value
        u[i] = value
        if value:
            ch_nonzero[c] += 1
            ch_len[c] += length
        ch_total[c] += 1
        x, y, c = next_position(x, y, c, width, height, channels)
    if decoding:
        return 0 if q == n_bytes and not bad else -1
    for _ in range(4):  # x1's bytes: the decoder reads 4 bytes ahead
        if q < buf.shape[0]:
            buf[q] = x1 >> 24
        q += 1
        x1 = (x1 << 8) & 0xFFFFFFFF
    return q

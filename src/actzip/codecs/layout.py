"""Helpers the codecs share about the shape of what they code: the (outer, channels, inner) view of
a map and the shape field of the lossy codecs' streams, the planes the context coders read
(`plane_shape`, `next_position`), coefficient widths, samples, per-channel entropy and the error measure of every
budget. Here so that no codec imports a sibling codec for them."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ..errors import CorruptStreamError
from .base import read_varint, write_varint

MAX_DIMS = 8
STEP_RANGE = (2.0**-4, 2.0**20)  # re-quantization steps a stream may carry


@njit(cache=True, nogil=True)
def squared_error(x, y):
    """(sum((y - x)^2), sum(x^2)) over two flat arrays of the same size, in float64."""
    err = energy = 0.0
    for i in range(x.size):
        v = np.float64(x[i])
        d = np.float64(y[i]) - v
        err += d * d
        energy += v * v
    return err, energy


def relative_error(x, y) -> float:
    """sum((y - x)^2) / sum(x^2): the error measure of every budget (0 when both are all zero, 1 for
    any error on an all-zero x)."""
    x, y = np.ravel(x), np.ravel(y)
    if x.shape != y.shape:
        raise ValueError(f"cannot compare {x.size} values with {y.size}")
    err, energy = squared_error(x, y)
    return err / energy if energy else float(err > 0)


def value_range(dtype: np.dtype, bits: int) -> tuple[int, int]:
    if dtype.kind == "i":
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def shape_3d(shape, axis: int) -> tuple[int, int, int]:
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])


def planes(c: np.ndarray, shape: tuple, axis: int) -> np.ndarray:
    """An inner stream c as (..., H, W) planes of the map's last two axes after the channel axis,
    so a coder with spatial context (`ctxrans`) sees each coefficient's neighbours; as it is
    when the map has no such plane."""
    after = tuple(shape[axis % len(shape) + 1:])
    if len(after) < 2 or c.size == 0:
        return c
    return c.reshape(-1, math.prod(after[:-1]), after[-1])


def write_shape(shape: tuple) -> bytes:
    """The map's shape as a stream records it: the dimension count, then each dimension."""
    return write_varint(len(shape)) + b"".join(write_varint(d) for d in shape)


def read_shape(buf: bytes, h, codec: str) -> tuple[list[int], int]:
    """(shape, next position) of a `write_shape` field right after the header h; CorruptStreamError
    unless it has 2..MAX_DIMS dimensions holding the header's value count."""
    ndim, pos = read_varint(buf, h.size, "dimension count")
    if not 2 <= ndim <= MAX_DIMS:
        raise CorruptStreamError(f"{codec}: {ndim} dimensions")
    shape = []
    for _ in range(ndim):
        d, pos = read_varint(buf, pos, "shape")
        shape.append(d)
    if math.prod(shape) != h.n:
        raise CorruptStreamError(f"{codec}: shape {shape} does not hold the {h.n} values the header claims")
    return shape, pos


def as_3d(a: np.ndarray, shape: tuple, axis: int) -> np.ndarray:
    """a viewed as (outer, channels, inner) around the channel axis."""
    if not 2 <= len(shape) <= MAX_DIMS:
        raise ValueError(f"a lossy codec needs an array of 2..{MAX_DIMS} dimensions with a channel axis, "
                         f"got shape {tuple(shape)}")
    if not -len(shape) <= axis < len(shape):
        raise ValueError(f"channel axis {axis} does not exist in shape {tuple(shape)}")
    return a.reshape(shape_3d(shape, axis % len(shape)))


def narrow(c: np.ndarray) -> tuple[np.ndarray, int]:
    """c in the smallest 16-bit dtype and width that hold it; ValueError when 16 bits do not."""
    if c.size == 0:
        return c.astype(np.uint16), 1
    lo, hi = int(c.min()), int(c.max())
    if lo >= 0:
        if hi >= 1 << 16:
            raise ValueError(f"coefficients reach {hi}, past 16 bits: use a larger step")
        return c.astype(np.uint16, copy=False), max(1, hi.bit_length())
    width = max(hi.bit_length(), (-lo - 1).bit_length()) + 1
    if width > 16:
        raise ValueError(f"coefficients span [{lo}, {hi}], past 16 bits: use a larger step")
    return c.astype(np.int16, copy=False), width


def sample_pixels(x3: np.ndarray, max_values: int) -> np.ndarray:
    """A regular subsample of the pixels of x3 (all channels kept) of at most about max_values values."""
    A, C, B = x3.shape
    if x3.size <= max_values:
        return x3
    pixels = max(1, max_values // C)
    stride_a = max(1, -(-A // pixels))
    x3 = x3[::stride_a]
    stride_b = max(1, -(-(x3.shape[0] * B) // pixels))
    return np.ascontiguousarray(x3[:, :, ::stride_b])


def channel_entropy(q3: np.ndarray) -> np.ndarray:
    """Order-0 entropy in bits per value of each channel of q3 (A, C, B)."""
    q = q3.transpose(1, 0, 2).reshape(q3.shape[1], -1).astype(np.int64)
    C, n = q.shape
    if n == 0:
        return np.zeros(C)
    q -= q.min()
    width = int(q.max()) + 1
    counts = np.bincount((q + width * np.arange(C)[:, None]).ravel(), minlength=C * width).reshape(C, width)
    p = counts / n
    return -(p * np.log2(np.where(counts > 0, p, 1.0))).sum(axis=1)


def plane_shape(shape: tuple) -> tuple[int, int, int]:
    """(channels, height, width) of the planes an array of this shape is read as."""
    if len(shape) >= 3:
        return int(shape[-3]), int(shape[-2]), int(shape[-1])
    if len(shape) == 2:
        return int(shape[-1]), 1, 1
    return 1, 1, max(1, int(np.prod(shape)))


@njit(cache=True, inline="always")
def next_position(x, y, c, width, height, channels):
    """(x, y, c) of the value after (x, y, c) in the (C, H, W) planes the context coders read."""
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

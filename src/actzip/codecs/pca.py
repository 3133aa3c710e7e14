"""The channel Karhunen-Loeve transform (PCA) of the `klt` codec: fitting it to a site's maps, the
coefficients and the reconstruction, and the per-channel offsets that bring each channel's mean
error back to zero with the clip to the code range in place (see klt.py for why they matter).
The products run as float32 BLAS matrix products; the roundings on the codec pool.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .base import check_input, parallel_map, threads
from .layout import as_3d, sample_pixels, value_range

MAX_CHANNELS = 512  # the basis grows as C^2: 512 channels keep it (as float16, base64) under the container's header limit
OFFSET_ROUNDS = 4  # fixed-point rounds of `offsets`; the mean error stops moving after two or three


def codes_3d(x, axis: int) -> np.ndarray:
    """Codes like x as (outer, channels, inner), channels along `axis`."""
    x = np.asarray(x)
    return as_3d(check_input(x, None)[0], x.shape, axis)


def fit(x, axis: int = 1, max_values: int = 1 << 20) -> dict:
    """The principal axes of the channels of codes like x: {"basis": (C, C) float32, its columns
    the axes by falling variance, each as float16 would store it; "mean": (C,) float32}."""
    x3 = codes_3d(x, axis)
    channels = x3.shape[1]
    if not 2 <= channels <= MAX_CHANNELS:
        raise ValueError(f"a channel transform needs 2..{MAX_CHANNELS} channels, got {channels}")
    sample = sample_pixels(x3, max_values).transpose(1, 0, 2).reshape(channels, -1).astype(np.float64)
    if sample.shape[1] < 2:
        raise ValueError("a channel transform needs at least two pixels to fit on")
    mean = sample.mean(axis=1)
    variance, axes = np.linalg.eigh(np.cov(sample - mean[:, None]))
    axes = axes[:, np.argsort(variance)[::-1]]
    axes *= np.where(axes[np.abs(axes).argmax(axis=0), range(channels)] < 0, -1.0, 1.0)  # one sign, whatever LAPACK
    return {"basis": axes.astype(np.float16).astype(np.float32), "mean": mean.astype(np.float32)}


@njit(cache=True, nogil=True)
def _round_coefficients(y, first, centre, inv_step, out, fits):
    """Rows (a, c) = first, first + 1, ... of y (rows, B): out int16 = floor((y - centre[c]) *
    inv_step + 1/2), and per row whether all of it fits int16 (where not, out is undefined)."""
    C = centre.shape[0]
    for r in range(y.shape[0]):
        m = centre[(first + r) % C]
        ok = True
        for b in range(y.shape[1]):
            v = np.floor((y[r, b] - m) * inv_step + np.float32(0.5))
            ok &= (v >= -32768.0) & (v <= 32767.0)
            out[r, b] = np.int32(v)
        fits[r] = ok


@njit(cache=True, nogil=True)
def _round_codes(y, first, shift, lo, hi, out):
    """Rows (a, c) = first, ... of y (rows, B): out = floor(y + shift[c] + 1/2), clipped to [lo, hi]."""
    C = shift.shape[0]
    for r in range(y.shape[0]):
        s = shift[(first + r) % C] + np.float32(0.5)
        for b in range(y.shape[1]):  # lo and hi as float32: the clip stays in float and vectorizes
            out[r, b] = np.int32(min(max(np.floor(y[r, b] + s), lo), hi))


def _by_rows(kernel, y: np.ndarray, out: np.ndarray, *args, row_arrays: tuple = ()) -> None:
    """kernel(y rows, first row, *args, out rows, *row_arrays rows) over blocks of the (A, C, B)
    arrays' A * C rows on the codec pool (the kernels release the GIL)."""
    y2, out2 = y.reshape(-1, y.shape[-1]), out.reshape(-1, out.shape[-1])
    rows = y2.shape[0]
    bounds = np.linspace(0, rows, min(rows, threads()) + 1).astype(int)
    parallel_map(lambda i: kernel(y2[bounds[i]:bounds[i + 1]], bounds[i], *args, out2[bounds[i]:bounds[i + 1]],
                                  *(a[bounds[i]:bounds[i + 1]] for a in row_arrays)), list(range(len(bounds) - 1)))


def coefficients(x3: np.ndarray, basis: np.ndarray, mean: np.ndarray, step: float) -> np.ndarray:
    """(A, C, B) int16: x3's coefficients on the basis, re-quantized with step; ValueError when
    they do not fit 16 bits."""
    return requantized(np.matmul(basis.T, x3.astype(np.float32)), basis, mean, step)


def requantized(y: np.ndarray, basis: np.ndarray, mean: np.ndarray, step: float) -> np.ndarray:
    """coefficients from the product y = B^T x: the mean is taken off after it (B^T x - B^T mean),
    one pass less over the map, and one product serves every step of a curve."""
    out = np.empty(y.shape, np.int16)
    fits = np.empty(y.shape[0] * y.shape[1], np.bool_)
    _by_rows(_round_coefficients, y, out, basis.T @ mean, np.float32(1.0 / step), row_arrays=(fits,))
    if not fits.all():
        raise ValueError("coefficients past 16 bits: use a larger step")
    return out


def reconstruction(c: np.ndarray, basis: np.ndarray, shift: np.ndarray, step: float, dtype: np.dtype,
                   bits: int) -> np.ndarray:
    """(A, C, B) codes of dtype from coefficients c: round(basis c step + shift), clipped to the code range."""
    lo, hi = value_range(np.dtype(dtype), bits)
    y = np.matmul(basis * np.float32(step), c.astype(np.float32))
    out = np.empty(y.shape, dtype)
    _by_rows(_round_codes, y, out, shift.astype(np.float32), np.float32(lo), np.float32(hi))
    return out


def offsets(x, bits: int, basis: np.ndarray, mean: np.ndarray, step: float, axis: int = 1,
            max_values: int = 1 << 20) -> np.ndarray:
    """(C,) float32: per channel, what to subtract after the inverse transform so that the
    channel's mean error over codes like x (of `bits` bits) is zero with the clip to the code
    range in place."""
    x3 = sample_pixels(codes_3d(x, axis), max_values)
    return mean_offsets(x3, coefficients(x3, basis, mean, step), bits, basis, mean, step)


def mean_offsets(x3: np.ndarray, c: np.ndarray, bits: int, basis: np.ndarray, mean: np.ndarray,
                 step: float) -> np.ndarray:
    """`offsets` from a sample x3 and its coefficients c (a curve has them already)."""
    target = x3.mean(axis=(0, 2), dtype=np.float64)
    off = np.zeros(len(mean), np.float32)
    for _ in range(OFFSET_ROUNDS):
        decoded = reconstruction(c, basis, mean - off, step, x3.dtype, bits)
        off += (decoded.mean(axis=(0, 2), dtype=np.float64) - target).astype(np.float32)
    return off

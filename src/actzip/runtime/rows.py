"""Numba kernels that write the masked pixels of a channels_last conv output: the fill where the
compiled kernels are missing (`native.fill_pixels` does it on PyTorch's threads), and the expand
of kept rows of the oneDNN fallback.

Both also serve a conv whose output is added to a residual and then clamped (ResNet's conv2 ->
+ identity -> ReLU, run as one op): given the identity, a pixel becomes clamp(value + identity).

A pixel of an NHWC tensor is one contiguous row of C values, so the kernels work on whole rows. They
run on the calling thread: numba's parallel loops start an OpenMP pool that shares libgomp with
PyTorch and resets its thread count (torch.set_num_threads(1) read 2 after one masked forward). PyTorch's equivalents cost several times more: `rows[:, idx] = fill`
goes through index_put's per-element indexing (6x slower than `fill_pixels` on MobileNetV2's
expand outputs), and expanding the kept rows by cat + index_select makes and writes two full
tensors instead of one.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit


@njit(cache=True, nogil=True, inline="always")
def _write_row(row, source, identity, i, p, lo, hi):
    """row = source; with a non-empty identity, clamp(source + identity[i, p], lo, hi)."""
    if identity.shape[0] > 0:
        add = identity[i, p]
        for k in range(row.shape[0]):
            row[k] = min(max(source[k] + add[k], lo), hi)
    else:
        for k in range(row.shape[0]):
            row[k] = source[k]


@njit(cache=True, nogil=True)
def _fill_pixels(out, pixels, value, identity, lo, hi):
    """value at the given pixels of every image; with a non-empty identity, clamp(value + identity).
    Two loops, not one over images x pixels: the division per row took 5 % of ResNet18's fills."""
    for i in range(out.shape[0]):
        for p in pixels:
            _write_row(out[i, p], value, identity, i, p, lo, hi)


@njit(cache=True, nogil=True)
def _expand_rows(kept, slot, fill, identity, lo, hi, out):
    """Kept rows or fill at every pixel; with a non-empty identity, clamp(that + identity)."""
    n, hw, _ = out.shape
    per_image = kept.shape[0] // n
    for i in range(n):
        for p in range(hw):
            s = slot[p]
            _write_row(out[i, p], kept[i * per_image + s] if s >= 0 else fill, identity, i, p, lo, hi)


def _pixel_rows(x: torch.Tensor) -> np.ndarray:
    """(N, H*W, C) numpy view of a channels_last (N, C, H, W) float32 tensor."""
    n, c, h, w = x.shape
    return x.detach().permute(0, 2, 3, 1).view(n, h * w, c).numpy()  # view: raises rather than fill a copy


Residual = tuple[torch.Tensor, float, float]  # (identity, lo, hi): clamp(value + identity, lo, hi)
_NO_IDENTITY = np.zeros((0, 0, 0), np.float32)


def _residual_args(residual: Residual | None) -> tuple[np.ndarray, float, float]:
    if residual is None:
        return _NO_IDENTITY, -np.inf, np.inf
    identity, lo, hi = residual
    return _pixel_rows(identity), lo, hi


def fill_pixels(x: torch.Tensor, pixels: np.ndarray, value: np.ndarray, residual: Residual | None = None) -> None:
    """Set the pixels `pixels` (flat indices into H*W) of every image of `x` to `value` (C,), or with
    `residual` to clamp(value + identity), in place."""
    if len(pixels):
        _fill_pixels(_pixel_rows(x), pixels, value, *_residual_args(residual))


def expand_rows(kept: torch.Tensor, slot: np.ndarray, fill: np.ndarray, shape: tuple[int, int, int, int],
                residual: Residual | None = None) -> torch.Tensor:
    """The channels_last tensor of `shape` whose pixel p of image i is row i * R + slot[p] of `kept`
    (R = kept rows per image), or `fill` where slot[p] < 0; with `residual`, clamp(that + identity)."""
    out = torch.empty(shape, memory_format=torch.channels_last)
    _expand_rows(kept.detach().numpy(), slot, fill, *_residual_args(residual), _pixel_rows(out))
    return out

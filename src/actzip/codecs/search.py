"""Rate-distortion searches of the lossy codecs: the cheapest `transform.Settings` for an error
budget (`choose`, which `dctcm` calls when given a budget), the points of pixel-domain
re-quantization one step after another, for a whole map (`pixel_curve`) or per channel
(`channel_curves`), and of the `klt` transform one step after another (`klt_curve`), which
`actzip.lossy` plans budgets with. Rates are estimated from the
coefficients (zvc's exact size, or an order-0 entropy), never by coding.
"""

from __future__ import annotations

import math

import numpy as np

from . import pca
from .base import check_input
from .layout import as_3d, channel_entropy, narrow, relative_error, sample_pixels
from .transform import Settings, coefficients, keep_mask, reconstruction, step_grid


def estimated_bits(c: np.ndarray, coder: str) -> float:
    """What an inner stream of c costs, without coding it (zvc exactly up to padding; rans ~ its
    order-0 entropy, and so an upper bound for ctxrans)."""
    if c.size == 0:
        return 0.0
    if coder == "zvc":
        nnz = int(np.count_nonzero(c))
        return c.size + nnz * narrow(c)[1]
    counts = np.unique(c, return_counts=True)[1]
    p = counts / c.size
    return float(-(counts * np.log2(p)).sum()) + 24.0 * len(counts)


def settings_cost(x3: np.ndarray, s: Settings, bits: int, coder: str) -> tuple[float, float]:
    """(relative squared error, estimated bits) of coding x3 with s; inf, inf when the
    coefficients do not fit 16 bits."""
    try:
        dc, ac = coefficients(x3, s)
        total = estimated_bits(dc, coder) + estimated_bits(ac, coder)
    except ValueError:
        return math.inf, math.inf
    return relative_error(x3, reconstruction(dc, ac, x3.shape, s, x3.dtype, bits)), total


def _sample(x, bits: int | None, axis: int, max_values: int) -> tuple[np.ndarray, int]:
    x = np.asarray(x)
    a, bits = check_input(x, bits)
    return sample_pixels(as_3d(a, x.shape, axis), max_values), bits


def pixel_curve(x, bits: int, coder: str = "zvc", axis: int = 1, max_values: int = 1 << 20) -> list[dict]:
    """The rate-distortion points of pixel-domain re-quantization of codes like x, one per step of
    the grid `choose` walks: step, relative squared error, estimated bits per value."""
    x3, bits = _sample(x, bits, axis, max_values)
    points = []
    for step in step_grid(bits):
        err, total = settings_cost(x3, Settings(False, 1, (1,), float(step)), bits, coder)
        points.append({"step": float(step), "error": err, "bits_per_value": total / max(x3.size, 1)})
    return points


def channel_curves(x, bits: int, axis: int = 1, max_values: int = 1 << 20) -> dict:
    """Per channel of codes like x, the rate-distortion points of pixel-domain re-quantization at
    every step of the grid: "steps" (S,), "error" (C, S) squared error summed over the channel's
    values, "energy" (C,) their sum of squares, "bits_per_value" (C, S) the channel's order-0
    entropy (what a per-channel step plan is chosen by, in `actzip.lossy.budgets`)."""
    x3, bits = _sample(x, bits, axis, max_values)
    steps = step_grid(bits)
    values = x3.astype(np.float64)
    error = np.empty((x3.shape[1], len(steps)))
    rate = np.empty_like(error)
    for j, step in enumerate(steps):
        s = Settings(False, 1, (1,), float(step))
        q = coefficients(x3, s)[1]
        y = reconstruction(np.zeros(0, np.int32), q, x3.shape, s, x3.dtype, bits)
        error[:, j] = np.square(y - values).sum(axis=(0, 2))
        rate[:, j] = channel_entropy(q.reshape(x3.shape))
    return {"steps": steps, "error": error, "energy": np.square(values).sum(axis=(0, 2)), "bits_per_value": rate}


def choose(x, bits: int, budget: float, group: int = 8, coder: str = "zvc", axis: int = 1,
           transform: bool = True, max_values: int = 1 << 20) -> dict:
    """The cheapest settings (transform or not, keep mask, step) for codes like x whose relative
    squared error stays within `budget`: per keep count (low-pass) and for the pixel domain, the
    largest step on the grid within budget (by bisection), then the fewest estimated bits.
    transform=False searches the pixel domain only."""
    if not 0 < budget < 1:
        raise ValueError(f"error budget must be in (0, 1), got {budget}")
    x3, bits = _sample(x, bits, axis, max_values)
    steps = step_grid(bits)
    candidates = [Settings(False, group, (1,) * group, 1.0)]
    if transform and x3.shape[1] >= group:
        candidates += [Settings(True, group, keep_mask(k, group), 1.0) for k in range(1, group + 1)]
    best, best_bits = None, math.inf
    for base in candidates:
        lo, hi = -1, len(steps)  # steps[lo] fits the budget (or lo = -1), steps[hi] does not
        found = None
        while hi - lo > 1:
            mid = (lo + hi) // 2
            s = Settings(base.transform, group, base.keep, float(steps[mid]))
            err, total = settings_cost(x3, s, bits, coder)
            if err <= budget:
                lo, found = mid, (s, total)
            else:
                hi = mid
        if found and found[1] < best_bits:
            best, best_bits = found
    return {"transform": best.transform, "group": group, "keep": list(best.keep), "step": best.step}


def klt_curve(x, bits: int, basis: np.ndarray, mean: np.ndarray, steps, axis: int = 1,
          max_values: int = 1 << 20) -> list[dict]:
    """Per step: the step, its offsets, the relative squared error of coding codes like x with
    them and the coefficients' order-0 entropy per channel, in bits per value (the rate measure
    of `channel_curves`)."""
    x3 = sample_pixels(pca.codes_3d(x, axis), max_values)
    y = np.matmul(basis.T, x3.astype(np.float32))
    points = []
    for step in steps:
        step = float(np.float32(step))  # as the codec stores it
        try:
            c = pca.requantized(y, basis, mean, step)
        except ValueError:  # past 16 bits
            points.append({"step": step, "offsets": None, "error": math.inf, "bits_per_value": math.inf})
            continue
        off = pca.mean_offsets(x3, c, bits, basis, mean, step)
        error = relative_error(x3, pca.reconstruction(c, basis, mean - off, step, x3.dtype, bits))
        rate = float(channel_entropy(c).mean())
        points.append({"step": step, "offsets": off, "error": error, "bits_per_value": rate})
    return points

"""Streaming per-site statistics with bounded memory.

Two kinds, one per pass over the images:
- RangeStats (calibration pass): counts, min/max overall and per channel, and a log-magnitude
  histogram from which percentiles are read. Its size does not depend on the number of images.
- SiteStats (measurement pass, quantizers fixed): counts, exact zero-skipping MACs, and per bit width
  the exact histogram of integer codes, from which every order-0 bit count follows exactly.
Both merge by addition, so shards of a dataset can be measured apart and combined.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit
from torch import nn

from .errors import ActzipError
from .macs import MacCount, count_macs
from .quant import QuantParams, code_range

# log2-magnitude histogram for percentiles: 1/32 octave bins (about 2 % relative resolution).
LOG2_LO, LOG2_HI, BINS_PER_OCTAVE = -48, 48, 32
N_LOG_BINS = (LOG2_HI - LOG2_LO) * BINS_PER_OCTAVE


def channel_view(x: torch.Tensor, axis: int | None) -> np.ndarray:
    """x as a contiguous float32 numpy array of shape (outer, channels, inner) along `axis`.

    With axis None the whole tensor is one channel.
    """
    x = x.detach().to(torch.float32)
    if axis is None:
        return x.contiguous().numpy().reshape(1, 1, -1)
    axis %= x.ndim
    outer = math.prod(x.shape[:axis])
    return x.contiguous().numpy().reshape(outer, x.shape[axis], -1)


class RangeStats:
    """What calibration needs of one site, streamed."""

    def __init__(self, channels: int, channel_axis: int):
        self.channel_axis = channel_axis
        self.numel = 0
        self.zeros = 0
        self.channel_min = np.full(channels, np.inf)
        self.channel_max = np.full(channels, -np.inf)
        self.log_hist = np.zeros(N_LOG_BINS, dtype=np.int64)

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        dims = [d for d in range(x.ndim) if d != self.channel_axis % x.ndim]
        lo, hi = x.amin(dims), x.amax(dims)
        if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            raise ActzipError("activation map holds NaN or infinity: the model or its weights are broken")
        np.minimum(self.channel_min, lo.numpy(), out=self.channel_min)
        np.maximum(self.channel_max, hi.numpy(), out=self.channel_max)
        mags = x.abs().flatten()
        mags = mags[mags > 0]
        self.numel += x.numel()
        self.zeros += x.numel() - mags.numel()
        bins = ((torch.log2(mags) - LOG2_LO) * BINS_PER_OCTAVE).floor_().clamp_(0, N_LOG_BINS - 1)
        self.log_hist += torch.bincount(bins.to(torch.int64), minlength=N_LOG_BINS).numpy()

    def merge(self, other: "RangeStats") -> None:
        self.numel += other.numel
        self.zeros += other.zeros
        np.minimum(self.channel_min, other.channel_min, out=self.channel_min)
        np.maximum(self.channel_max, other.channel_max, out=self.channel_max)
        self.log_hist += other.log_hist

    def magnitude_percentile(self, q: float) -> float:
        """An upper bound, within one bin (~2 %), of the q-th percentile of |x| (zeros included)."""
        if not 0 < q <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {q}")
        rank = q / 100 * self.numel - self.zeros
        if rank <= 0:
            return 0.0
        b = int(np.searchsorted(np.cumsum(self.log_hist), rank))
        return float(2.0 ** (LOG2_LO + (b + 1) / BINS_PER_OCTAVE))

    def bounds(self, method: str = "max", percentile: float = 99.99, per_channel: bool = False):
        """(lo, hi) for a quantizer: scalars, or arrays over channels when per_channel."""
        if self.numel == 0:
            raise ActzipError("no activations were seen: calibration needs at least one image")
        lo, hi = self.channel_min, self.channel_max
        if method == "max":
            return (lo, hi) if per_channel else (lo.min(), hi.max())
        if method == "percentile":
            if per_channel:
                raise ValueError("percentile calibration is per tensor; use method='max' for per-channel scales")
            top = min(self.magnitude_percentile(percentile), max(abs(lo.min()), hi.max()))
            return (-top if lo.min() < 0 else 0.0), top
        raise ValueError(f"calibration method must be 'max' or 'percentile', got {method!r}")


@njit(cache=True, nogil=True)
def _code_histogram(x, scale, qmin, qmax, hist):
    """hist[q - qmin] += 1 for q = clip(rint(x / scale[c]), qmin, qmax); x is (outer, C, inner) float32."""
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            s = scale[c]
            for i in range(x.shape[2]):
                q = np.rint(x[n, c, i] / s)
                if q < qmin:
                    q = qmin
                elif q > qmax:
                    q = qmax
                hist[np.int64(q) - qmin] += 1


class CodeHistogram:
    """Exact histogram of the integer codes of one site under a fixed quantizer."""

    def __init__(self, params: QuantParams):
        self.params = params
        qmin, qmax = code_range(params.bits, params.signed)
        self.counts = np.zeros(qmax - qmin + 1, dtype=np.int64)
        self._scale = np.asarray(params.scale, dtype=np.float32)

    @property
    def zero_index(self) -> int:
        return -self.params.qmin

    @property
    def numel(self) -> int:
        return int(self.counts.sum())

    def update(self, x: torch.Tensor) -> None:
        p = self.params
        _code_histogram(channel_view(x, p.axis), self._scale, p.qmin, p.qmax, self.counts)

    def merge(self, other: "CodeHistogram") -> None:
        self.counts += other.counts


class SiteStats:
    """Everything the report says of one site, accumulated batch by batch."""

    def __init__(self, quantizers: dict[int, QuantParams]):
        self.numel = 0
        self.zeros = 0
        self.macs = MacCount()
        self.codes = {bits: CodeHistogram(p) for bits, p in quantizers.items()}

    def update(self, module: nn.Module, x: torch.Tensor) -> None:
        x = x.detach()
        nonzero = (x != 0).sum((0, 1)) if x.ndim == 4 else torch.count_nonzero(x)
        c = count_macs(module, x, nonzero)
        self.macs.macs += c.macs
        self.macs.effective_macs += c.effective_macs
        self.numel += x.numel()
        self.zeros += x.numel() - int(nonzero.sum())
        for h in self.codes.values():
            h.update(x)

    def merge(self, other: "SiteStats") -> None:
        self.numel += other.numel
        self.zeros += other.zeros
        self.macs.macs += other.macs.macs
        self.macs.effective_macs += other.macs.effective_macs
        for bits, h in self.codes.items():
            h.merge(other.codes[bits])

    @property
    def zero_fraction(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0

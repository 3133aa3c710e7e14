"""Streaming per-site statistics with bounded memory.

Two kinds, one per pass over the images:
- RangeStats (calibration pass): counts, min/max per channel, and a magnitude histogram from which
  percentiles are read. Its size does not depend on the number of images.
- SiteStats (measurement pass, quantizers fixed): counts, exact zero-skipping MACs, and per bit width
  the exact histogram of integer codes, from which every order-0 bit count follows exactly.
Both merge by addition, so shards of a dataset can be measured apart and combined.

Each pass reads an activation map once, in a numba kernel that splits its rows over the cores
(torch is idle while hooks run) and keeps per-thread histograms, summed at the end.
"""

from __future__ import annotations

import math

import numpy as np
import numba
import torch
from numba import njit, prange
from torch import nn

from .errors import ActzipError
from .macs import MacCount, count_macs
from .quant import QuantParams, code_dtype, code_range, quantize

# Magnitude histogram: a float32's bits without the sign, shifted right by 18, keep its exponent and
# the top 5 mantissa bits, so bins are 1/32 of an octave wide (3 % relative) over every float32.
MAG_SHIFT = 18
N_MAG_BINS = 1 << (31 - MAG_SHIFT)


def channel_view(x: torch.Tensor, axis: int) -> np.ndarray:
    """x as a contiguous float32 numpy array of shape (outer, channels, inner) along `axis`."""
    x = x.detach().to(torch.float32).contiguous()
    axis %= x.ndim
    return x.numpy().reshape(math.prod(x.shape[:axis]), x.shape[axis], -1)


@njit(cache=True, nogil=True, parallel=True)
def _range_pass(x, ch_min, ch_max, mag_hist, threads):
    """Per-channel min/max and the magnitude histogram of x (outer, C, inner).

    Returns (zero count, count of NaN or infinite values)."""
    outer, channels, inner = x.shape
    rows = outer * channels
    mins = np.empty((threads, channels), np.float32)
    maxs = np.empty((threads, channels), np.float32)
    hists = np.zeros((threads, mag_hist.shape[0]), np.int64)
    zeros = np.zeros(threads, np.int64)
    bad = np.zeros(threads, np.int64)
    bits = x.view(np.uint32)
    for t in prange(threads):
        mins[t, :] = np.inf
        maxs[t, :] = -np.inf
        for r in range(rows * t // threads, rows * (t + 1) // threads):
            n, c = r // channels, r % channels
            lo, hi = mins[t, c], maxs[t, c]
            for i in range(inner):
                v = x[n, c, i]
                if v < lo:
                    lo = v
                if v > hi:
                    hi = v
                if v == 0:
                    zeros[t] += 1
                elif v - v != 0:  # NaN or infinity
                    bad[t] += 1
                else:
                    hists[t, (bits[n, c, i] & 0x7FFFFFFF) >> 18] += 1
            mins[t, c], maxs[t, c] = lo, hi
    for t in range(threads):
        for c in range(channels):
            ch_min[c] = min(ch_min[c], mins[t, c])
            ch_max[c] = max(ch_max[c], maxs[t, c])
        mag_hist += hists[t]
    return zeros.sum(), bad.sum()


class RangeStats:
    """What calibration needs of one site, streamed."""

    def __init__(self, channels: int, channel_axis: int):
        self.channel_axis = channel_axis
        self.numel = 0
        self.zeros = 0
        self.channel_min = np.full(channels, np.inf)
        self.channel_max = np.full(channels, -np.inf)
        self.mag_hist = np.zeros(N_MAG_BINS, dtype=np.int64)

    def update(self, x: torch.Tensor) -> None:
        zeros, bad = _range_pass(channel_view(x, self.channel_axis), self.channel_min, self.channel_max,
                                 self.mag_hist, numba.get_num_threads())
        if bad:
            raise ActzipError(f"activation map holds {bad} NaN or infinite values: the model or its weights are broken")
        self.zeros += int(zeros)
        self.numel += x.numel()

    def merge(self, other: "RangeStats") -> None:
        self.numel += other.numel
        self.zeros += other.zeros
        np.minimum(self.channel_min, other.channel_min, out=self.channel_min)
        np.maximum(self.channel_max, other.channel_max, out=self.channel_max)
        self.mag_hist += other.mag_hist

    def magnitude_percentile(self, q: float) -> float:
        """An upper bound, within one bin (3 %), of the q-th percentile of |x| (zeros included)."""
        if not 0 < q <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {q}")
        rank = q / 100 * self.numel - self.zeros
        if rank <= 0:
            return 0.0
        b = int(np.searchsorted(np.cumsum(self.mag_hist), rank))
        upper_edge = np.array([min(b + 1, N_MAG_BINS - 1) << MAG_SHIFT], dtype=np.uint32).view(np.float32)
        return float(upper_edge[0])

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


@njit(cache=True, nogil=True, parallel=True)
def _measure_pass(x, scales, qmins, qmaxs, offsets, hist, nonzero_at, threads):
    """One read of x (outer, C, inner): nonzero_at[i] += non-zeros at inner position i, and for each
    quantizer b, hist[offsets[b] + q - qmins[b]] += 1 for q = clip(rint(x / scales[b, c])).

    Division (not multiplication by 1/scale) so codes equal quant.quantize bit for bit."""
    outer, channels, inner = x.shape
    rows = outer * channels
    n_q = scales.shape[0]
    hists = np.zeros((threads, hist.shape[0]), np.int64)
    nonzeros = np.zeros((threads, inner), np.int64)
    for t in prange(threads):
        for r in range(rows * t // threads, rows * (t + 1) // threads):
            n, c = r // channels, r % channels
            for i in range(inner):
                v = x[n, c, i]
                if v == 0:
                    continue
                nonzeros[t, i] += 1
                for b in range(n_q):
                    q = np.rint(v / scales[b, c])
                    if q > qmaxs[b]:
                        q = qmaxs[b]
                    elif not q >= qmins[b]:  # also NaN: an index must never leave the histogram
                        q = qmins[b]
                    hists[t, offsets[b] + np.int64(q) - qmins[b]] += 1
    total_zeros = rows * inner
    for t in range(threads):
        hist += hists[t]
        nonzero_at += nonzeros[t]
        total_zeros -= nonzeros[t].sum()
    for b in range(n_q):  # an exact zero is code 0 under every (symmetric) quantizer
        hist[offsets[b] - qmins[b]] += total_zeros


class CodeHistogram:
    """Exact histogram of the integer codes of one site under one fixed quantizer (a view into SiteStats)."""

    def __init__(self, params: QuantParams, counts: np.ndarray):
        self.params = params
        self.counts = counts

    @property
    def zero_index(self) -> int:
        return -self.params.qmin

    @property
    def numel(self) -> int:
        return int(self.counts.sum())


class SiteStats:
    """Everything the report says of one site, accumulated batch by batch.

    `coders` maps a codec name to one codec per bit width; each batch's quantized codes are encoded
    with each, and the real stream lengths add up in `stream_bits[name][bits]`.
    """

    def __init__(self, quantizers: dict[int, QuantParams], channel_axis: int = 1, coders: dict | None = None):
        self.channel_axis = channel_axis
        self.coders = coders or {}
        self.stream_bits = {name: {b: 0 for b in quantizers} for name in self.coders}
        self.numel = 0
        self.zeros = 0
        self.macs = MacCount()
        sizes = [code_range(p.bits, p.signed) for p in quantizers.values()]
        self._offsets = np.cumsum([0] + [hi - lo + 1 for lo, hi in sizes])
        self._hist = np.zeros(self._offsets[-1], dtype=np.int64)
        self._qmins = np.array([lo for lo, _ in sizes], dtype=np.int64)
        self._qmaxs = np.array([hi for _, hi in sizes], dtype=np.int64)
        self._params = list(quantizers.values())
        self.codes = {b: CodeHistogram(p, self._hist[self._offsets[i]:self._offsets[i + 1]])
                      for i, (b, p) in enumerate(quantizers.items())}

    def _scales(self, channels: int) -> np.ndarray:
        rows = []
        for p in self._params:
            if p.axis is not None and len(p.scale) != channels:
                raise ValueError(f"quantizer has {len(p.scale)} channel scales, activation has {channels}")
            rows.append(np.broadcast_to(np.asarray(p.scale, np.float32), channels))
        return np.ascontiguousarray(np.stack(rows))

    def update(self, module: nn.Module, x: torch.Tensor) -> None:
        for p in self._params:
            if p.axis is not None and p.axis % x.ndim != self.channel_axis % x.ndim:
                raise ValueError("per-channel scales must run along the site's channel axis")
        view = channel_view(x, self.channel_axis)
        nonzero_at = np.zeros(view.shape[2], dtype=np.int64)
        _measure_pass(view, self._scales(view.shape[1]), self._qmins, self._qmaxs, self._offsets, self._hist,
                      nonzero_at, numba.get_num_threads())
        nonzero = int(nonzero_at.sum())
        # for a conv input (N, C, H, W) the inner positions are the H x W pixels
        per_pixel = torch.from_numpy(nonzero_at.reshape(x.shape[2:])) if x.ndim == 4 else nonzero
        c = count_macs(module, x, per_pixel)
        self.macs.macs += c.macs
        self.macs.effective_macs += c.effective_macs
        self.numel += x.numel()
        self.zeros += x.numel() - nonzero
        if self.coders:
            for b, p in zip(self.codes, self._params):
                q = quantize(x, p).numpy().astype(code_dtype(p.bits, p.signed))
                for name, per_bits in self.coders.items():
                    self.stream_bits[name][b] += 8 * len(per_bits[b].encode(q))

    def state_vector(self) -> np.ndarray:
        """Every count as one int64 vector (for all-reducing over ranks); see load_state_vector."""
        streams = [v for name in sorted(self.stream_bits) for _, v in sorted(self.stream_bits[name].items())]
        head = [self.numel, self.zeros, self.macs.macs, self.macs.effective_macs]
        return np.concatenate([np.array(head + streams, np.int64), self._hist])

    def load_state_vector(self, v: np.ndarray) -> None:
        self.numel, self.zeros, self.macs.macs, self.macs.effective_macs = (int(x) for x in v[:4])
        pos = 4
        for name in sorted(self.stream_bits):
            for b in sorted(self.stream_bits[name]):
                self.stream_bits[name][b] = int(v[pos])
                pos += 1
        self._hist[:] = v[pos:]

    def merge(self, other: "SiteStats") -> None:
        self.numel += other.numel
        self.zeros += other.zeros
        self.macs.macs += other.macs.macs
        self.macs.effective_macs += other.macs.effective_macs
        self._hist += other._hist
        for name, per_bits in other.stream_bits.items():
            for b, v in per_bits.items():
                self.stream_bits[name][b] += v

    @property
    def zero_fraction(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0

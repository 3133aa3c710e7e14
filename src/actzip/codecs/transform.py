"""The transforms the lossy codecs code with, and the grid their steps live on.

A `Settings` says how one map is turned into integer coefficients and back: in the channel domain
(`transform=True`), an orthonormal DCT-II over groups of G channels at every pixel, the kept
frequencies re-quantized with one step; in the pixel domain, the codes themselves re-quantized,
with one step or one per channel. `coefficients` and `reconstruction` are the two directions;
the codecs (`dctcm`, `requant`) code the coefficients and record the settings in their streams,
and `actzip.codecs.search` picks settings for an error budget.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
from numba import njit

from ..errors import CorruptStreamError
from .layout import STEP_RANGE, value_range

MAX_GROUP = 64
STEPS_PER_OCTAVE = 4  # the grid channel steps live on: 2^(k/4), k in 0..MAX_STEP_INDEX
MAX_STEP_INDEX = 80  # 2^20, the top of STEP_RANGE


def dct_matrix(g: int) -> np.ndarray:
    """The orthonormal DCT-II of length g: row f is frequency f (row 0 the DC)."""
    n = np.arange(g)
    m = np.cos(np.pi * (2 * n[None, :] + 1) * n[:, None] / (2 * g)) * math.sqrt(2 / g)
    m[0] /= math.sqrt(2)
    return m


@njit(cache=True, nogil=True)
def _forward(x, basis, inv_step, coef):
    """coef (F, A, groups, B): the kept coefficients of x (A, C, B) per channel group, re-quantized;
    frequency first, so that the DC and the other coefficients are two contiguous slices."""
    A, C, B = x.shape
    F, G = basis.shape
    groups = (C + G - 1) // G
    acc = np.empty(B, np.float32)
    for t in range(A * groups):
        a, g = t // groups, t % groups
        c0 = g * G
        for f in range(F):
            acc[:] = 0.0
            for c in range(min(G, C - c0)):
                w = basis[f, c]
                for b in range(B):
                    acc[b] += w * np.float32(x[a, c0 + c, b])
            for b in range(B):
                coef[f, a, g, b] = np.int32(np.floor(acc[b] * inv_step + np.float32(0.5)))


@njit(cache=True, nogil=True)
def _inverse(coef, basis, step, lo, hi, out):
    """out (A, C, B) from the coefficients `_forward` wrote, rounded and clipped to [lo, hi]."""
    A, C, B = out.shape
    F, G = basis.shape
    groups = (C + G - 1) // G
    acc = np.empty(B, np.float32)
    for t in range(A * groups):
        a, g = t // groups, t % groups
        c0 = g * G
        for c in range(min(G, C - c0)):
            acc[:] = 0.0
            for f in range(F):
                w = basis[f, c] * step
                for b in range(B):
                    acc[b] += w * np.float32(coef[f, a, g, b])
            for b in range(B):
                v = np.floor(acc[b] + np.float32(0.5))
                out[a, c0 + c, b] = lo if v < lo else (hi if v > hi else v)


@njit(cache=True, nogil=True)
def _requantize(x, inv_step, out):
    for i in range(x.size):
        out[i] = np.int32(np.floor(np.float32(x[i]) * inv_step + np.float32(0.5)))


@njit(cache=True, nogil=True)
def _dequantize(c, step, lo, hi, out):
    for i in range(c.size):
        v = np.floor(np.float32(c[i]) * step + np.float32(0.5))
        out[i] = lo if v < lo else (hi if v > hi else v)


@njit(cache=True, nogil=True)
def _requantize_channels(x, inv_steps, out):
    """out (A, C, B) = x re-quantized with channel c's step."""
    A, C, B = x.shape
    for a in range(A):
        for c in range(C):
            s = inv_steps[c]
            for b in range(B):
                out[a, c, b] = np.int32(np.floor(np.float32(x[a, c, b]) * s + np.float32(0.5)))


@njit(cache=True, nogil=True)
def _dequantize_channels(q, steps, lo, hi, out):
    A, C, B = out.shape
    for a in range(A):
        for c in range(C):
            s = steps[c]
            for b in range(B):
                v = np.floor(np.float32(q[a, c, b]) * s + np.float32(0.5))
                out[a, c, b] = lo if v < lo else (hi if v > hi else v)


def keep_mask(keep, group: int) -> tuple[int, ...]:
    """keep as a 0/1 mask over the group's frequencies: None (all), a count of the lowest, or a mask."""
    if keep is None:
        return (1,) * group
    if isinstance(keep, (int, np.integer)) and not isinstance(keep, bool):
        if not 1 <= keep <= group:
            raise ValueError(f"keep count {keep} is outside 1..{group} (the group size)")
        return (1,) * int(keep) + (0,) * (group - int(keep))
    mask = tuple(int(bool(v)) for v in keep)
    if len(mask) != group:
        raise ValueError(f"keep mask has {len(mask)} entries, the group size is {group}")
    if not any(mask):
        raise ValueError("keep mask keeps no frequency")
    return mask


@dataclass(frozen=True)
class Settings:
    """What one stream is coded with (all recorded in the stream)."""

    transform: bool
    group: int
    keep: tuple[int, ...]
    step: float
    channel_steps: tuple[float, ...] = ()  # pixel domain only: one step per channel instead of `step`

    @property
    def basis(self) -> np.ndarray:
        rows = [f for f, k in enumerate(self.keep) if k]
        return np.ascontiguousarray(dct_matrix(self.group)[rows], np.float32)

    @property
    def has_dc(self) -> int:
        return self.keep[0]


def coefficients(x3: np.ndarray, s: Settings) -> tuple[np.ndarray, np.ndarray]:
    """(DC, other kept coefficients) as int32 arrays; in the pixel domain, (empty, requantized x)."""
    inv_step = np.float32(1.0 / s.step)
    if s.channel_steps:
        if len(s.channel_steps) != x3.shape[1]:
            raise ValueError(f"{len(s.channel_steps)} channel steps for {x3.shape[1]} channels")
        out = np.empty(x3.shape, np.int32)
        _requantize_channels(x3, (1.0 / np.array(s.channel_steps)).astype(np.float32), out)
        return np.zeros(0, np.int32), out.reshape(-1)
    if not s.transform:
        out = np.empty(x3.size, np.int32)
        _requantize(x3.reshape(-1), inv_step, out)
        return np.zeros(0, np.int32), out
    A, C, B = x3.shape
    if C < s.group:
        raise ValueError(f"{C} channels are fewer than the DCT group size {s.group}")
    basis = s.basis
    coef = np.empty((basis.shape[0], A, -(-C // s.group), B), np.int32)
    _forward(x3, basis, inv_step, coef)
    return coef[:s.has_dc].reshape(-1), coef[s.has_dc:].reshape(-1)


def reconstruction(dc: np.ndarray, ac: np.ndarray, shape3: tuple, s: Settings, dtype: np.dtype,
                   bits: int) -> np.ndarray:
    """The decoded codes (shape3) from the coefficients."""
    lo, hi = value_range(dtype, bits)
    out = np.empty(shape3, dtype)
    if s.channel_steps:
        _dequantize_channels(ac.reshape(shape3), np.array(s.channel_steps, np.float32), lo, hi, out)
        return out
    if not s.transform:
        _dequantize(ac, np.float32(s.step), lo, hi, out.reshape(-1))
        return out
    A, C, B = shape3
    groups = -(-C // s.group)
    basis = s.basis
    coef = np.concatenate([dc, ac], dtype=np.int32).reshape(basis.shape[0], A, groups, B)
    _inverse(coef, basis, np.float32(s.step), lo, hi, out)
    return out


def step_grid(bits: int) -> np.ndarray:
    """The step grid the search walks: quarter octaves from 1 to half the code range."""
    return 2.0 ** (np.arange(STEPS_PER_OCTAVE * (bits - 1) + 1) / STEPS_PER_OCTAVE)


def step_index(step: float) -> int:
    """k with step = 2^(k/4); ValueError for a step off that grid or outside 1..2^20."""
    k = round(STEPS_PER_OCTAVE * math.log2(step)) if step > 0 else -1
    if not 0 <= k <= MAX_STEP_INDEX or abs(2.0 ** (k / STEPS_PER_OCTAVE) - step) > 1e-9 * step:
        raise ValueError(f"channel steps must be 2^(k/{STEPS_PER_OCTAVE}) for k in 0..{MAX_STEP_INDEX}, got {step!r}")
    return k


def read_steps(buf: bytes, pos: int, channels: int, codec: str) -> tuple[float, tuple[float, ...], int]:
    """(step, channel steps, next position) of a stream's step field: a float32 step, or with
    `channels` one grid index per channel (the step is then 1)."""
    if channels:
        if pos + channels > len(buf):
            raise CorruptStreamError(f"{codec}: stream truncated inside its channel steps")
        indices = np.frombuffer(buf, np.uint8, channels, pos)
        if indices.max() > MAX_STEP_INDEX:
            raise CorruptStreamError(f"{codec}: channel step out of range")
        return 1.0, tuple(2.0 ** (indices / STEPS_PER_OCTAVE)), pos + channels
    if pos + 4 > len(buf):
        raise CorruptStreamError(f"{codec}: stream truncated inside its step")
    (step,) = struct.unpack_from("<f", buf, pos)
    if not STEP_RANGE[0] <= step <= STEP_RANGE[1]:
        raise CorruptStreamError(f"{codec}: step {step} out of range")
    return float(step), (), pos + 4

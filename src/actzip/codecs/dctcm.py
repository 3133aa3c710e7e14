"""`dctcm`: DCT-CM transform coding (Shi et al., ISCAS 2021). Lossy.

At every pixel the channels are cut into groups of G (a last, shorter group is zero-padded), each
group goes through an orthonormal DCT-II of length G, only the frequencies in the keep mask stay,
and they are re-quantized with one step per site: c = floor(y / step + 1/2). The DC coefficients
and the others go to two separate lossless streams, because the DC needs more range: each is
coded by `zvc` (a zero bitmap plus the non-zeros at the smallest width that holds them; the
paper's bitmap coding), by `rans`, or by `ctxrans` (which sees each coefficient's spatial
neighbours: the streams are passed as H x W planes). Decoding inverts the kept part of the
transform, rounds to the nearest code and clips to the input's range.

With `transform=False` the same re-quantization happens in the pixel domain instead: the choice
for late layers that are already sparse after ReLU, where a channel DCT would smear the zeros.
`step=1, transform=False` is lossless. In the pixel domain each channel can have its own step
(`channel_steps`, on the quarter-octave grid 2^(k/4) the searches walk, one byte each in the
stream): the channels of one map matter very differently to the model's output, and
`actzip.lossy.importance` measures by how much. Given an error `budget`, each encode chooses transform or
not, keep mask and step itself (`choose`; transform=False then restricts it to the pixel domain).

Cost: the header (about 20 bytes) plus the two inner streams, i.e. for zvc
n_coef + nnz_dc * w_dc + nnz_ac * w_ac bits, n_coef = pixels * groups * kept frequencies.
Error: the energy of the dropped frequencies plus about step^2 / 12 per kept coefficient, plus
the final rounding; `relative_error` measures it, and `choose` picks the cheapest settings for
a site whose relative squared error stays within a budget.

The channel axis is `axis` (1: (N, C, H, W) activation maps); the stream records the shape, and
`decode` returns the 1-D reconstruction like every codec.

>>> import numpy as np
>>> from actzip.codecs import get
>>> x = np.random.default_rng(0).poisson(40, size=(2, 16, 4, 4)).astype(np.uint8)
>>> c = get("dctcm", bits=8, group=8, keep=4, step=2.0)
>>> y = c.decode(c.encode(x)).reshape(x.shape)
>>> bool(relative_error(x, y) < 0.05), np.array_equal(y.ravel(), c.reconstruct(x))
(True, True)
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
from numba import njit

from ..errors import CorruptStreamError
from .base import Codec, LossyCodec, check_input, pack_header, parse_header, read_varint, register, stream_bytes, write_varint
from .ctxrans import ContextRANS
from .layout import (STEP_RANGE, as_3d, channel_entropy, narrow, planes, read_shape, relative_error, sample_pixels,
                     shape_3d, value_range, write_shape)
from .rans import RANS
from .zvc import ZVC

MAX_GROUP = 64
CODERS = {"zvc": ZVC, "rans": RANS, "ctxrans": ContextRANS}
CODER_IDS = {name: i for i, name in enumerate(CODERS)}
STEPS_PER_OCTAVE = 4  # the grid channel steps live on: 2^(k/4), k in 0..MAX_STEP_INDEX
MAX_STEP_INDEX = 80  # 2^20, the top of STEP_RANGE
PIXEL, DCT, PIXEL_PER_CHANNEL = 0, 1, 2  # the stream's transform byte


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




def _keep_mask(keep, group: int) -> tuple[int, ...]:
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


def _estimated_bits(c: np.ndarray, coder: str) -> float:
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


def step_grid(bits: int) -> np.ndarray:
    """The step grid the search walks: quarter octaves from 1 to half the code range."""
    return 2.0 ** (np.arange(STEPS_PER_OCTAVE * (bits - 1) + 1) / STEPS_PER_OCTAVE)


def step_index(step: float) -> int:
    """k with step = 2^(k/4); ValueError for a step off that grid or outside 1..2^20."""
    k = round(STEPS_PER_OCTAVE * math.log2(step)) if step > 0 else -1
    if not 0 <= k <= MAX_STEP_INDEX or abs(2.0 ** (k / STEPS_PER_OCTAVE) - step) > 1e-9 * step:
        raise ValueError(f"channel steps must be 2^(k/{STEPS_PER_OCTAVE}) for k in 0..{MAX_STEP_INDEX}, got {step!r}")
    return k


def settings_cost(x3: np.ndarray, s: Settings, bits: int, coder: str) -> tuple[float, float]:
    """(relative squared error, estimated bits) of coding x3 with s; inf, inf when the
    coefficients do not fit 16 bits."""
    try:
        dc, ac = coefficients(x3, s)
        total = _estimated_bits(dc, coder) + _estimated_bits(ac, coder)
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
        candidates += [Settings(True, group, _keep_mask(k, group), 1.0) for k in range(1, group + 1)]
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


DEFAULT_BUDGET = 1e-3  # relative squared error of a dctcm given no settings: ~0.1 % of the maps' energy


@register
class DCTCM(LossyCodec):
    """DCT-CM: channel-group DCT, frequency mask, re-quantization, entropy coding (lossy).

    Parameters:
        bits: the codes' bit width (None: taken from each input).
        group: DCT length G over the channels, a power of two in 2..MAX_GROUP.
        keep: the frequencies kept: a count k (the k lowest) or a 0/1 mask of G entries; None keeps all.
        step: re-quantization step of the coefficients (None: 1.0).
        transform: False codes in the pixel domain (no DCT; step 1 is lossless there).
        coder: the inner lossless coder: "zvc" (the paper's bitmap coding), "rans" or "ctxrans".
        axis: the channel axis of the input.
        budget: a relative squared error in (0, 1): each encode chooses transform, keep and step
            itself to stay within it. "auto" (the default) means DEFAULT_BUDGET when none of keep,
            step and channel_steps is given, else None; None codes with exactly the settings given.
        channel_steps: one step per channel, in the pixel domain (transform=False, no budget).
    """

    codec_id = "dctcm"

    def __init__(self, bits: int | None = None, group: int = 8, keep=None, step: float | None = None,
                 transform: bool = True, coder: str = "ctxrans", axis: int = 1, budget: float | str | None = "auto",
                 channel_steps=None):
        super().__init__(bits)
        if isinstance(budget, str) and budget == "auto":  # no settings given: search within a modest error
            budget = DEFAULT_BUDGET if keep is None and step is None and channel_steps is None else None
        step = 1.0 if step is None else step
        if isinstance(group, bool) or not isinstance(group, (int, np.integer)) or group < 2 or group > MAX_GROUP \
                or group & (group - 1):
            raise ValueError(f"group size must be a power of two in 2..{MAX_GROUP}, got {group!r}")
        self.group = int(group)
        self.keep = _keep_mask(keep, self.group)
        if not (isinstance(step, (int, float)) and STEP_RANGE[0] <= step <= STEP_RANGE[1]):
            raise ValueError(f"step must be a number in [{STEP_RANGE[0]}, {STEP_RANGE[1]}], got {step!r}")
        self.step = float(step)
        self.transform = bool(transform)
        if coder not in CODERS:
            raise ValueError(f"coder must be one of {', '.join(CODERS)}, got {coder!r}")
        self.coder = coder
        self.axis = int(axis)
        if budget is not None and (isinstance(budget, (bool, str)) or not 0 < budget < 1):
            raise ValueError(f"error budget must be in (0, 1), None or 'auto', got {budget!r}")
        self.budget = budget
        self.channel_steps = tuple(float(v) for v in channel_steps) if channel_steps is not None else ()
        if channel_steps is not None:
            if self.transform or budget is not None:
                raise ValueError("channel_steps are a pixel-domain setting: pass transform=False and no budget")
            if not self.channel_steps:
                raise ValueError("channel_steps is empty")
        self._step_indices = bytes(step_index(v) for v in self.channel_steps)

    def _params(self) -> dict:
        return {"bits": self.bits, "group": self.group, "keep": list(self.keep), "step": self.step,
                "transform": self.transform, "coder": self.coder, "axis": self.axis, "budget": self.budget,
                "channel_steps": list(self.channel_steps) or None}

    def _settings(self, a_in) -> Settings:
        if self.budget is None:
            return Settings(self.transform, self.group, self.keep, self.step, self.channel_steps)
        chosen = choose(a_in, self.bits, self.budget, self.group, self.coder, self.axis, self.transform)
        return Settings(chosen["transform"], self.group, tuple(chosen["keep"]), chosen["step"])

    def _prepare(self, a_in) -> tuple[np.ndarray, int, np.ndarray, Settings]:
        a, bits = check_input(a_in, self.bits)
        x3 = as_3d(a, np.shape(a_in), self.axis)
        return a, bits, x3, self._settings(a_in)

    def reconstruct(self, a_in) -> np.ndarray:
        """decode(encode(a_in)) without the entropy coding: the same 1-D array, faster."""
        a, bits, x3, s = self._prepare(a_in)
        dc, ac = coefficients(x3, s)
        narrow(dc), narrow(ac)  # the same range errors as encode
        return reconstruction(dc, ac, x3.shape, s, a.dtype, bits).reshape(-1)

    def encode(self, a_in) -> bytes:
        a, bits, x3, s = self._prepare(a_in)
        shape = np.shape(a_in)
        dc, ac = coefficients(x3, s)
        inner = CODERS[self.coder]
        streams = [inner(bits=w).encode(planes(c, shape, self.axis)) for c, w in (narrow(dc), narrow(ac))]
        axis = self.axis % len(shape)
        mask = sum(k << f for f, k in enumerate(s.keep))
        kind = PIXEL_PER_CHANNEL if s.channel_steps else DCT if s.transform else PIXEL
        return (pack_header(a, bits) + write_shape(shape)
                + bytes([axis, kind, s.group, CODER_IDS[self.coder]]) + write_varint(mask)
                + struct.pack("<f", s.step) + self._step_indices
                + write_varint(len(streams[0])) + streams[0] + streams[1])

    def decode(self, buf) -> np.ndarray:
        buf = stream_bytes(buf)
        h = parse_header(buf)
        shape, pos = read_shape(buf, h, "dctcm")
        ndim = len(shape)
        if pos + 4 > len(buf):
            raise CorruptStreamError("dctcm: stream truncated inside its settings")
        axis, kind, group, coder_id = buf[pos:pos + 4]
        mask, pos = read_varint(buf, pos + 4, "keep mask")
        if axis >= ndim or kind > PIXEL_PER_CHANNEL or coder_id >= len(CODERS) or group < 2 or group > MAX_GROUP \
                or group & (group - 1) or not 0 < mask < 1 << group:
            raise CorruptStreamError("dctcm: settings out of range")
        if pos + 4 > len(buf):
            raise CorruptStreamError("dctcm: stream truncated inside its step")
        (step,) = struct.unpack_from("<f", buf, pos)
        if not STEP_RANGE[0] <= step <= STEP_RANGE[1]:
            raise CorruptStreamError(f"dctcm: step {step} out of range")
        pos += 4
        A, C, B = shape3 = shape_3d(shape, axis)
        channel_steps = ()
        if kind == PIXEL_PER_CHANNEL:
            if pos + C > len(buf):
                raise CorruptStreamError("dctcm: stream truncated inside its channel steps")
            indices = np.frombuffer(buf, np.uint8, C, pos)
            if indices.size and indices.max() > MAX_STEP_INDEX:
                raise CorruptStreamError("dctcm: channel step out of range")
            channel_steps = tuple(2.0 ** (indices / STEPS_PER_OCTAVE))
            pos += C
        s = Settings(kind == DCT, group, tuple((mask >> f) & 1 for f in range(group)), float(step), channel_steps)
        dc_size, pos = read_varint(buf, pos, "DC stream length")
        if pos + dc_size > len(buf):
            raise CorruptStreamError("dctcm: DC stream runs past the end")
        if s.transform and C < group:
            raise CorruptStreamError(f"dctcm: {C} channels are fewer than the group size {group}")
        groups = -(-C // group)
        kept = sum(s.keep)
        want_dc = A * groups * B * s.has_dc if s.transform else 0
        want_ac = A * groups * B * (kept - s.has_dc) if s.transform else h.n
        inner = CODERS[list(CODERS)[coder_id]]()
        dc = self._inner(inner, buf[pos:pos + dc_size], want_dc, "DC")
        ac = self._inner(inner, buf[pos + dc_size:], want_ac, "coefficient")
        return reconstruction(dc, ac, shape3, s, h.dtype, h.bits).reshape(-1)

    @staticmethod
    def _inner(coder: Codec, buf: bytes, want: int, what: str) -> np.ndarray:
        c = coder.decode(buf)
        if c.size != want or c.dtype.itemsize != 2:
            raise CorruptStreamError(f"dctcm: the {what} stream holds {c.size} {c.dtype} values, expected {want}")
        return c



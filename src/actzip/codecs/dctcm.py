"""`dctcm`: DCT-CM transform coding (Shi et al., ISCAS 2021). Lossy.

At every pixel the channels are cut into groups of G (a last, shorter group is zero-padded), each
group goes through an orthonormal DCT-II of length G, only the frequencies in the keep mask stay,
and they are re-quantized with one step per site: c = floor(y / step + 1/2). The DC coefficients
and the others go to two separate lossless streams, because the DC needs more range: each is
coded by `zvc` (a zero bitmap plus the non-zeros at the smallest width that holds them; the
paper's bitmap coding), by `rans`, by `ctxrans` (which sees each coefficient's spatial
neighbours: the streams are passed as H x W planes), or by `ctx` (whose mixing model also sees
the previous plane: 12-18 % smaller streams than ctxrans on Lite0's maps, decoded 20-40x
slower; docs/results/codec_peers.md). Decoding inverts the kept part of the
transform, rounds to the nearest code and clips to the input's range.

With `transform=False` (or `channel_steps`, one step per channel) the codes are re-quantized in
the pixel domain instead, by the `requant` codec, whose stream then follows dctcm's header: the
choice for late layers that are already sparse after ReLU, where a channel DCT would smear the
zeros. Given an error `budget`, each encode chooses DCT or pixel domain, keep mask and step
itself (`search.choose`; transform=False then restricts it to the pixel domain). Streams written
before `requant` existed coded the pixel domain themselves (transform bytes 0 and 2); they
still decode.

Cost: the header (about 20 bytes) plus the two inner streams, i.e. for zvc
n_coef + nnz_dc * w_dc + nnz_ac * w_ac bits, n_coef = pixels * groups * kept frequencies.
Error: the energy of the dropped frequencies plus about step^2 / 12 per kept coefficient, plus
the final rounding; `layout.relative_error` measures it, and `search.choose` picks the cheapest settings for
a site whose relative squared error stays within a budget.

The channel axis is `axis` (1: (N, C, H, W) activation maps); the stream records the shape, and
`decode` returns the 1-D reconstruction like every codec.

>>> import numpy as np
>>> from actzip.codecs import get
>>> from actzip.codecs.layout import relative_error
>>> x = np.random.default_rng(0).poisson(40, size=(2, 16, 4, 4)).astype(np.uint8)
>>> c = get("dctcm", bits=8, group=8, keep=4, step=2.0)
>>> y = c.decode(c.encode(x)).reshape(x.shape)
>>> bool(relative_error(x, y) < 0.05), np.array_equal(y.ravel(), c.reconstruct(x))
(True, True)
"""

from __future__ import annotations

import struct

import numpy as np

from ..errors import CorruptStreamError
from .base import (Codec, LossyCodec, check_input, pack_header, parse_header, read_varint, register, registry,
                   stream_bytes, write_varint)
from .layout import STEP_RANGE, as_3d, narrow, planes, read_shape, shape_3d, write_shape
from .search import choose
from .transform import MAX_GROUP, Settings, coefficients, keep_mask, read_steps, reconstruction, step_index

CODERS = ("zvc", "rans", "ctxrans", "ctx")  # the inner lossless coders, by registered name; a stream stores the index
CODER_IDS = {name: i for i, name in enumerate(CODERS)}
# The stream's transform byte: DCT, or REQUANT (a `requant` stream follows); PIXEL and PIXEL_PER_CHANNEL
# are the pixel-domain streams written before requant took them over, which still decode.
PIXEL, DCT, PIXEL_PER_CHANNEL, REQUANT = 0, 1, 2, 3


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
        coder: the inner lossless coder: "zvc" (the paper's bitmap coding), "rans", "ctxrans" (fast)
            or "ctx" (smallest).
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
        self.keep = keep_mask(keep, self.group)
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
        for v in self.channel_steps:  # off the grid: ValueError now, not at the first encode
            step_index(v)

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

    def _pixels(self, s: Settings):
        """The `requant` codec that codes settings s of the pixel domain."""
        return registry()["requant"](bits=self.bits, step=s.step, channel_steps=s.channel_steps or None,
                                     coder=self.coder, axis=self.axis, budget=None)

    def reconstruct(self, a_in) -> np.ndarray:
        """decode(encode(a_in)) without the entropy coding: the same 1-D array, faster."""
        a, bits, x3, s = self._prepare(a_in)
        if not s.transform:
            return self._pixels(s).reconstruct(a_in)
        dc, ac = coefficients(x3, s)
        narrow(dc), narrow(ac)  # the same range errors as encode
        return reconstruction(dc, ac, x3.shape, s, a.dtype, bits).reshape(-1)

    def encode(self, a_in) -> bytes:
        a, bits, x3, s = self._prepare(a_in)
        shape = np.shape(a_in)
        head = pack_header(a, bits) + write_shape(shape) + bytes([self.axis % len(shape)])
        if not s.transform:
            return head + bytes([REQUANT]) + self._pixels(s).encode(a_in)
        dc, ac = coefficients(x3, s)
        streams = [registry()[self.coder](bits=w).encode(planes(c, shape, self.axis)) for c, w in (narrow(dc), narrow(ac))]
        mask = sum(k << f for f, k in enumerate(s.keep))
        return (head + bytes([DCT, s.group, CODERS.index(self.coder)]) + write_varint(mask) + struct.pack("<f", s.step)
                + write_varint(len(streams[0])) + streams[0] + streams[1])

    def decode(self, buf) -> np.ndarray:
        buf = stream_bytes(buf)
        h = parse_header(buf)
        shape, pos = read_shape(buf, h, "dctcm")
        if pos + 2 > len(buf) or buf[pos] >= len(shape) or buf[pos + 1] > REQUANT:
            raise CorruptStreamError("dctcm: stream truncated or settings out of range")
        axis, kind = buf[pos:pos + 2]
        if kind == REQUANT:
            return self._inner(registry()["requant"](), buf[pos + 2:], h.n, h.dtype, "requant")
        if pos + 4 > len(buf):
            raise CorruptStreamError("dctcm: stream truncated inside its settings")
        group, coder_id = buf[pos + 2:pos + 4]
        mask, pos = read_varint(buf, pos + 4, "keep mask")
        if coder_id >= len(CODERS) or group < 2 or group > MAX_GROUP or group & (group - 1) or not 0 < mask < 1 << group:
            raise CorruptStreamError("dctcm: settings out of range")
        A, C, B = shape3 = shape_3d(shape, axis)
        step, channel_steps, pos = read_steps(buf, pos, 0, "dctcm")
        if kind == PIXEL_PER_CHANNEL:  # written before requant: the channel steps follow a step of 1
            _, channel_steps, pos = read_steps(buf, pos, C, "dctcm")
        s = Settings(kind == DCT, group, tuple((mask >> f) & 1 for f in range(group)), step, channel_steps)
        return self._coefficients(buf, pos, h, shape3, s, coder_id)

    def _coefficients(self, buf: bytes, pos: int, h, shape3: tuple, s: Settings, coder_id: int) -> np.ndarray:
        """The codes from the DC and coefficient streams at buf[pos:]."""
        A, C, B = shape3
        dc_size, pos = read_varint(buf, pos, "DC stream length")
        if pos + dc_size > len(buf):
            raise CorruptStreamError("dctcm: DC stream runs past the end")
        if s.transform and C < s.group:
            raise CorruptStreamError(f"dctcm: {C} channels are fewer than the group size {s.group}")
        groups = -(-C // s.group)
        want_dc = A * groups * B * s.has_dc if s.transform else 0
        want_ac = A * groups * B * (sum(s.keep) - s.has_dc) if s.transform else h.n
        inner = registry()[CODERS[coder_id]]()
        dc = self._inner(inner, buf[pos:pos + dc_size], want_dc, np.uint16, "DC")
        ac = self._inner(inner, buf[pos + dc_size:], want_ac, np.uint16, "coefficient")
        return reconstruction(dc, ac, shape3, s, h.dtype, h.bits).reshape(-1)

    @staticmethod
    def _inner(coder: Codec, buf: bytes, want: int, dtype, what: str) -> np.ndarray:
        """What an inner stream decodes to, checked to hold `want` values of dtype's size."""
        c = coder.decode(buf)
        if c.size != want or c.dtype.itemsize != np.dtype(dtype).itemsize:
            raise CorruptStreamError(f"dctcm: the {what} stream holds {c.size} {c.dtype} values, expected {want}")
        return c



"""`requant`: the codes re-quantized in the pixel domain, then entropy-coded. Lossy.

Each code x becomes q = floor(x / step + 1/2), coded by an inner lossless coder (`ctxrans` by
default, which sees each value's spatial neighbours); decoding rounds q * step to the nearest
code and clips it to the code range. `step=1` is lossless. The step is one per map, or one per
channel (`channel_steps`, on the quarter-octave grid 2^(k/4) the searches walk, one byte each in
the stream): the channels of one map matter very differently to the model's output, and
`actzip.lossy.importance` measures by how much. Given an error `budget`, each encode picks the
largest step of the grid within it (`search.choose` in the pixel domain).

This is the choice for late layers that are already sparse after ReLU, where a channel DCT
(`dctcm`) would smear the zeros; `dctcm` codes its pixel-domain settings through this codec.

Stream: the header, the shape, the channel axis, the inner coder, one flag (per-channel steps or
not), then the step (float32) or one step index per channel, and the inner stream. Error: about
step^2 / 12 per value before the clip, which only takes error away.

>>> import numpy as np
>>> from actzip.codecs import get
>>> x = np.random.default_rng(0).poisson(40, size=(2, 16, 4, 4)).astype(np.uint8)
>>> c = get("requant", bits=8, step=4.0)
>>> y = c.decode(c.encode(x))
>>> bool(np.abs(y.astype(int) - x.ravel()).max() <= 2), np.array_equal(y, c.reconstruct(x))
(True, True)
"""

from __future__ import annotations

import struct

import numpy as np

from ..errors import CorruptStreamError
from .base import LossyCodec, check_input, pack_header, parse_header, register, registry, stream_bytes
from .layout import STEP_RANGE, as_3d, narrow, planes, read_shape, shape_3d, write_shape
from .search import choose
from .transform import Settings, coefficients, read_steps, reconstruction, step_index

CODERS = ("zvc", "rans", "ctxrans", "ctx")  # the inner lossless coders, by registered name; a stream stores the index
DEFAULT_BUDGET = 1e-3  # relative squared error of a requant given no step: ~0.1 % of the maps' energy


@register
class Requant(LossyCodec):
    """Pixel-domain re-quantization, one step per map or per channel, then lossless coding (lossy).

    Parameters:
        bits: the codes' bit width (None: taken from each input).
        step: the re-quantization step (None: 1.0, lossless).
        channel_steps: one step per channel instead, each 2^(k/4) for k in 0..80.
        coder: the inner lossless coder: "zvc", "rans", "ctxrans" (fast) or "ctx" (smallest).
        axis: the channel axis of the input.
        budget: a relative squared error in (0, 1): each encode picks its step to stay within it.
            "auto" (the default) means DEFAULT_BUDGET when neither step nor channel_steps is
            given, else None; None codes with exactly the step given.
    """

    codec_id = "requant"

    def __init__(self, bits: int | None = None, step: float | None = None, channel_steps=None, coder: str = "ctxrans",
                 axis: int = 1, budget: float | str | None = "auto"):
        super().__init__(bits)
        if isinstance(budget, str) and budget == "auto":
            budget = DEFAULT_BUDGET if step is None and channel_steps is None else None
        step = 1.0 if step is None else step
        if not (isinstance(step, (int, float)) and STEP_RANGE[0] <= step <= STEP_RANGE[1]):
            raise ValueError(f"step must be a number in [{STEP_RANGE[0]}, {STEP_RANGE[1]}], got {step!r}")
        if coder not in CODERS:
            raise ValueError(f"coder must be one of {', '.join(CODERS)}, got {coder!r}")
        if budget is not None and (isinstance(budget, (bool, str)) or not 0 < budget < 1):
            raise ValueError(f"error budget must be in (0, 1), None or 'auto', got {budget!r}")
        self.channel_steps = tuple(float(v) for v in channel_steps) if channel_steps is not None else ()
        if channel_steps is not None and (budget is not None or not self.channel_steps):
            raise ValueError("channel_steps need no budget and at least one step")
        self.step, self.coder, self.axis, self.budget = float(step), coder, int(axis), budget
        self._step_indices = bytes(step_index(v) for v in self.channel_steps)

    def _params(self) -> dict:
        return {"bits": self.bits, "step": self.step, "channel_steps": list(self.channel_steps) or None,
                "coder": self.coder, "axis": self.axis, "budget": self.budget}

    def _prepare(self, a_in) -> tuple[np.ndarray, int, np.ndarray, Settings]:
        a, bits = check_input(a_in, self.bits)
        x3 = as_3d(a, np.shape(a_in), self.axis)
        step = self.step
        if self.budget is not None:
            step = choose(a_in, self.bits, self.budget, coder=self.coder, axis=self.axis, transform=False)["step"]
        return a, bits, x3, Settings(False, 1, (1,), step, self.channel_steps)

    def reconstruct(self, a_in) -> np.ndarray:
        """decode(encode(a_in)) without the entropy coding: the same 1-D array, faster."""
        a, bits, x3, s = self._prepare(a_in)
        _, q = coefficients(x3, s)
        narrow(q)  # the same range error as encode
        return reconstruction(np.zeros(0, np.int32), q, x3.shape, s, a.dtype, bits).reshape(-1)

    def encode(self, a_in) -> bytes:
        a, bits, x3, s = self._prepare(a_in)
        shape = np.shape(a_in)
        q, width = narrow(coefficients(x3, s)[1])
        steps = self._step_indices if s.channel_steps else struct.pack("<f", s.step)
        inner = registry()[self.coder](bits=width).encode(planes(q, shape, self.axis))
        return (pack_header(a, bits) + write_shape(shape)
                + bytes([self.axis % len(shape), CODERS.index(self.coder), int(bool(s.channel_steps))]) + steps + inner)

    def decode(self, buf) -> np.ndarray:
        buf = stream_bytes(buf)
        h = parse_header(buf)
        shape, pos = read_shape(buf, h, "requant")
        if pos + 3 > len(buf):
            raise CorruptStreamError("requant: stream truncated inside its settings")
        axis, coder_id, per_channel = buf[pos:pos + 3]
        if axis >= len(shape) or coder_id >= len(CODERS) or per_channel > 1:
            raise CorruptStreamError("requant: settings out of range")
        shape3 = shape_3d(shape, axis)
        step, channel_steps, pos = read_steps(buf, pos + 3, shape3[1] if per_channel else 0, "requant")
        q = registry()[CODERS[coder_id]]().decode(buf[pos:])
        if q.size != h.n or q.dtype.itemsize != 2:
            raise CorruptStreamError(f"requant: the inner stream holds {q.size} {q.dtype} values, expected {h.n}")
        s = Settings(False, 1, (1,), step, channel_steps)
        return reconstruction(np.zeros(0, np.int32), q, shape3, s, h.dtype, h.bits).reshape(-1)

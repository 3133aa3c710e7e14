"""`klt`: a channel transform learned for one site (Karhunen-Loeve). Lossy.

The inputs of a depthwise conv are a ReLU6 of a 1x1 conv from a few times fewer channels, so at
each pixel their channel vector lies close to a low-dimensional subspace. The DCT's fixed basis
does not find it; the principal axes of the site's channels do (`pca.fit`, on calibration maps). At
each pixel the codes x (C channels) become coefficients c = floor(B^T (x - mean) / step + 1/2),
one step per site, which `ctxrans` (or `rans`, or `ctx`) codes as int16 planes; the decoder rounds
B c step + mean - offset to the nearest code and clips it to the code range.

The offsets are what makes this work inside a network. The error of a coefficient lands on every
channel, also on the ReLU's zeros, and the clip to the code range cuts its negative half there:
left alone each channel would be biased upwards, and the next conv sums the bias up instead of
averaging it out. `pca.offsets` calibrates one shift per channel, with the clip in place, that
brings each channel's mean error back to zero.

Error: at most step/2 per coefficient, which the orthonormal basis carries into the pixel domain
unchanged (float16 storage bends it by about 1e-3), plus the offsets and the final rounding; the
clip only takes error away. `search.klt_curve` measures error and rate per step on a sample, and
`actzip.lossy.planner` offers the transform per conv site next to pixel re-quantization
(`EvaluateConfig(transform=True)`), taken where it costs the site less.

The basis, mean and offsets are side information that a decoder holds once per site (C^2 + 2C
numbers, the basis stored as float16), not part of each stream; a stream carries an 8-byte
fingerprint of them, and decoding it with other settings is refused. The transform runs as a
float32 BLAS matrix product, so decode reproduces `reconstruct` exactly with the same numpy and
BLAS build; another BLAS may sum in another order and move a value that sits on a rounding
boundary by one code.

>>> import numpy as np
>>> from actzip.codecs import klt
>>> rng = np.random.default_rng(0)
>>> low = rng.normal(size=(2, 3, 8, 8))  # 16 channels driven by 3
>>> x = np.clip(40 * np.einsum("kc,nkhw->nchw", rng.normal(size=(3, 16)), low), 0, 255).astype(np.uint8)
>>> settings = klt.fit(x)
>>> c = klt.KLT(bits=8, step=2.0, **settings)
>>> y = c.decode(c.encode(x))
>>> bool(np.abs(y.astype(int) - x.ravel()).mean() < 2), np.array_equal(y, c.reconstruct(x))
(True, True)
"""

from __future__ import annotations

import base64
import hashlib
import struct

import numpy as np

from ..errors import CorruptStreamError
from .base import LossyCodec, check_input, pack_header, parse_header, register, registry, stream_bytes
from .layout import STEP_RANGE, as_3d, narrow, planes, read_shape, shape_3d, write_shape
from .pca import MAX_CHANNELS, coefficients, fit, offsets, reconstruction  # noqa: F401  (fit, offsets: as klt.fit, klt.offsets)

CODERS = ("ctxrans", "rans", "ctx")  # the inner lossless coders, by registered name; a stream stores the index
CODER_IDS = {name: i for i, name in enumerate(CODERS)}
FINGERPRINT = 8  # bytes


def _array(value, dtype, what: str, channels: int | None = None, square: bool = False) -> np.ndarray:
    """value (an array, a nested list, or base64 of its little-endian `dtype` bytes) as float32,
    rounded to dtype: a vector (of `channels` entries if given) or a channels x channels matrix."""
    dtype = np.dtype(dtype).newbyteorder("<")
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except ValueError:
            raise ValueError(f"{what} is not valid base64") from None
        if len(raw) % dtype.itemsize:
            raise ValueError(f"{what} holds {len(raw)} bytes, not a whole number of {dtype.name} values")
        out = np.frombuffer(raw, dtype)
        if square and out.size != (channels or 0) ** 2 or not square and channels is not None and out.size != channels:
            raise ValueError(f"{what} holds {out.size} values, expected {channels ** 2 if square else channels}")
        out = out.reshape((channels, channels) if square else (-1,))
    else:
        out = np.asarray(value, np.float64)
        want = (channels, channels) if square else (channels if channels is not None else len(np.ravel(out)),)
        if out.shape != want:
            raise ValueError(f"{what} has shape {out.shape}, expected {want}")
        out = out.astype(dtype)
    if not np.isfinite(out).all():
        raise ValueError(f"{what} holds NaN or infinity")
    return np.ascontiguousarray(out, np.float32)


@register
class KLT(LossyCodec):
    """KLT: a per-site learned channel transform with mean-error offsets, coded by ctxrans (lossy).

    Parameters:
        bits: the codes' bit width (None: taken from each input).
        basis: the C x C orthonormal transform, fitted by `fit` (stored as float16).
        mean: the per-channel mean removed before the transform.
        offsets: per transformed channel, the mean rounding error added back (None: zeros).
        step: the re-quantization step of the transformed channels.
        axis: the channel axis of the input.
        coder: the inner lossless coder, one of CODERS.
    """

    codec_id = "klt"

    def __init__(self, bits: int | None = None, basis=None, mean=None, offsets=None, step: float = 1.0,
                 axis: int = 1, coder: str = "ctxrans"):
        super().__init__(bits)
        if basis is None or mean is None:
            raise ValueError("the klt codec needs a basis and a mean: fit them with actzip.codecs.klt.fit")
        self.mean = _array(mean, np.float32, "mean")
        channels = len(self.mean)
        if not 2 <= channels <= MAX_CHANNELS:
            raise ValueError(f"a channel transform needs 2..{MAX_CHANNELS} channels, got {channels}")
        self.basis = _array(basis, np.float16, "basis", channels, square=True)
        self.offsets = _array(np.zeros(channels) if offsets is None else offsets, np.float32, "offsets", channels)
        if isinstance(step, bool) or not (isinstance(step, (int, float)) and STEP_RANGE[0] <= step <= STEP_RANGE[1]):
            raise ValueError(f"step must be a number in [{STEP_RANGE[0]}, {STEP_RANGE[1]}], got {step!r}")
        self.step = float(np.float32(step))
        if coder not in CODERS:
            raise ValueError(f"coder must be one of {', '.join(CODERS)}, got {coder!r}")
        self.coder = coder
        self.axis = int(axis)
        self._shift = self.mean - self.offsets
        self.fingerprint = hashlib.blake2b(
            self.basis.astype("<f2").tobytes() + self.mean.astype("<f4").tobytes() + self.offsets.astype("<f4").tobytes()
            + struct.pack("<fB", self.step, self.bits or 0), digest_size=FINGERPRINT).digest()

    @property
    def channels(self) -> int:
        return len(self.mean)

    @property
    def side_bytes(self) -> int:  # the float16 basis, the float32 mean and offsets
        return self.basis.size * 2 + (self.mean.size + self.offsets.size) * 4

    def _params(self) -> dict:
        def b64(a, dtype):
            return base64.b64encode(a.astype(dtype).tobytes()).decode()

        return {"bits": self.bits, "basis": b64(self.basis, "<f2"), "mean": b64(self.mean, "<f4"),
                "offsets": b64(self.offsets, "<f4"), "step": self.step, "axis": self.axis, "coder": self.coder}

    def describe(self) -> dict:
        return {"id": self.codec_id, "bits": self.bits, "channels": self.channels, "step": self.step,
                "coder": self.coder, "side_bytes": self.side_bytes, "fingerprint": self.fingerprint.hex()}

    def __repr__(self) -> str:
        return f"KLT(channels={self.channels}, step={self.step}, coder={self.coder!r}, fingerprint={self.fingerprint.hex()})"

    def _prepare(self, a_in) -> tuple[np.ndarray, int, np.ndarray]:
        a, bits = check_input(a_in, self.bits)
        x3 = as_3d(a, np.shape(a_in), self.axis)
        if x3.shape[1] != self.channels:
            raise ValueError(f"the klt basis is for {self.channels} channels, the input has {x3.shape[1]}")
        return a, bits, x3

    def reconstruct(self, a_in) -> np.ndarray:
        """decode(encode(a_in)) without the entropy coding: the same 1-D array, faster."""
        a, bits, x3 = self._prepare(a_in)
        c = coefficients(x3, self.basis, self.mean, self.step)
        return reconstruction(c, self.basis, self._shift, self.step, a.dtype, bits).reshape(-1)

    def encode(self, a_in) -> bytes:
        a, bits, x3 = self._prepare(a_in)
        shape = np.shape(a_in)
        c, width = narrow(coefficients(x3, self.basis, self.mean, self.step))
        inner = registry()[self.coder](bits=width).encode(planes(c.reshape(-1), shape, self.axis))
        return (pack_header(a, bits) + write_shape(shape)
                + bytes([self.axis % len(shape), CODER_IDS[self.coder]]) + self.fingerprint + inner)

    def decode(self, buf) -> np.ndarray:
        buf = stream_bytes(buf)
        h = parse_header(buf)
        shape, pos = read_shape(buf, h, "klt")
        ndim = len(shape)
        if pos + 2 + FINGERPRINT > len(buf):
            raise CorruptStreamError("klt: stream truncated inside its settings")
        axis, coder_id = buf[pos:pos + 2]
        if axis >= ndim or coder_id >= len(CODERS):
            raise CorruptStreamError("klt: settings out of range")
        if buf[pos + 2:pos + 2 + FINGERPRINT] != self.fingerprint:
            raise CorruptStreamError("klt: the stream was coded with another basis, mean, offsets or step "
                                     "than this codec's")
        shape3 = shape_3d(shape, axis)
        if shape3[1] != self.channels:
            raise CorruptStreamError(f"klt: the stream has {shape3[1]} channels, the basis {self.channels}")
        c = registry()[CODERS[coder_id]]().decode(buf[pos + 2 + FINGERPRINT:])
        if c.size != h.n or c.dtype.itemsize != 2:
            raise CorruptStreamError(f"klt: the coefficient stream holds {c.size} {c.dtype} values, expected {h.n}")
        return reconstruction(c.reshape(shape3), self.basis, self._shift, self.step, h.dtype, h.bits).reshape(-1)

"""Uniform n-bit quantization of activation maps.

Quantization is symmetric (zero point 0) on purpose: 0.0 always maps to code 0 and back, so the
zeros a ReLU produces stay zeros and a zero-skipping engine or a zero-aware codec sees them.
Non-negative sites use the unsigned range [0, 2^b - 1]; sites with negative values use the signed
range [-(2^(b-1) - 1), 2^(b-1) - 1] (the most negative code is left out to keep it symmetric).
A value that quantizes to code 0 counts as a zero from then on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

MIN_BITS, MAX_BITS = 2, 16


def check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bit width must be an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r}")
    return int(bits)


def code_range(bits: int, signed: bool) -> tuple[int, int]:
    """Smallest and largest integer code of a b-bit quantizer."""
    check_bits(bits)
    if signed:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def code_dtype(bits: int, signed: bool) -> np.dtype:
    """The smallest numpy integer dtype that holds every code."""
    check_bits(bits)
    if bits <= 8:
        return np.dtype(np.int8 if signed else np.uint8)
    return np.dtype(np.int16 if signed else np.uint16)


@dataclass(frozen=True)
class QuantParams:
    """A calibrated quantizer: `scale` is one float (per tensor) or one per channel along `axis`."""

    bits: int
    signed: bool
    scale: tuple[float, ...]
    axis: int | None = None  # None: per tensor; else the channel axis the scales run along

    def __post_init__(self):
        check_bits(self.bits)
        if not self.scale or not all(np.isfinite(s) and s > 0 for s in self.scale):
            raise ValueError(f"scales must be finite and positive, got {self.scale[:4]}...")
        if self.axis is None and len(self.scale) != 1:
            raise ValueError("a per-tensor quantizer has exactly one scale")

    @property
    def qmin(self) -> int:
        return code_range(self.bits, self.signed)[0]

    @property
    def qmax(self) -> int:
        return code_range(self.bits, self.signed)[1]

    def scale_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """The scales shaped to broadcast against x."""
        s = torch.tensor(self.scale, dtype=torch.float32, device=x.device)
        if self.axis is None:
            return s.reshape(())
        axis = self.axis % x.ndim
        if x.shape[axis] != len(self.scale):
            raise ValueError(f"quantizer has {len(self.scale)} channel scales, tensor has {x.shape[axis]} channels")
        shape = [1] * x.ndim
        shape[axis] = -1
        return s.reshape(shape)

    def to_dict(self) -> dict:
        return {"bits": self.bits, "signed": self.signed, "scale": list(self.scale), "axis": self.axis}

    @classmethod
    def from_dict(cls, d: dict) -> "QuantParams":
        return cls(int(d["bits"]), bool(d["signed"]), tuple(float(s) for s in d["scale"]), d.get("axis"))


def params_for_range(bits: int, lo, hi, axis: int | None = None) -> QuantParams:
    """The quantizer that covers [lo, hi] (scalars, or arrays per channel) without clipping.

    The site is signed if any lower bound is negative. An all-zero range gets scale 1, so that
    everything still quantizes (to 0) instead of dividing by zero.
    """
    lo = np.atleast_1d(np.asarray(lo, dtype=np.float64))
    hi = np.atleast_1d(np.asarray(hi, dtype=np.float64))
    signed = bool((lo < 0).any())
    _, qmax = code_range(bits, signed)
    amax = np.maximum(np.abs(lo), np.abs(hi))
    scale = np.where(amax > 0, amax / qmax, 1.0)
    return QuantParams(check_bits(bits), signed, tuple(float(s) for s in scale), axis)


def quantize(x: torch.Tensor, p: QuantParams) -> torch.Tensor:
    """Float tensor -> integer codes (int32), rounded half to even and clipped to the code range."""
    q = torch.round(x.float() / p.scale_tensor(x)).clamp_(p.qmin, p.qmax)
    return q.to(torch.int32)


def dequantize(q: torch.Tensor, p: QuantParams) -> torch.Tensor:
    return q.float() * p.scale_tensor(q)


class _FakeQuantize(torch.autograd.Function):
    """Quantize-dequantize forward; straight-through gradient inside the range, zero where clipped."""

    @staticmethod
    def forward(ctx, x, scale, qmin, qmax):
        y = x / scale
        ctx.save_for_backward((y >= qmin - 0.5) & (y <= qmax + 0.5))
        return torch.round(y).clamp(qmin, qmax) * scale

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None


def fake_quantize(x: torch.Tensor, p: QuantParams) -> torch.Tensor:
    """Differentiable stand-in for dequantize(quantize(x)) used when training with quantized activations."""
    return _FakeQuantize.apply(x, p.scale_tensor(x).to(x.dtype), p.qmin, p.qmax)

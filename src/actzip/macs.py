"""Multiply-accumulates per site, and the ones a zero-skipping engine would actually perform.

A zero-skipping engine (Georgiadis 2019) skips every MAC whose input activation is zero. For a conv,
input pixel (i, j) of channel c is read by `coverage[i, j]` (output pixel, kernel tap) pairs of each of
the out_channels/groups filters that see channel c, so

    effective MACs = out_channels/groups * sum over n, c, i, j of [x[n, c, i, j] != 0] * coverage[i, j]

exact for stride, dilation, groups and any padding (zero padding reads nothing; reflect/replicate/
circular padding re-reads real pixels and is counted as such). Speedup = total MACs / effective MACs.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ConvGeometry:
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    padding: tuple[int, int, int, int]  # left, right, top, bottom (F.pad order)
    padding_mode: str  # "zeros", "reflect", "replicate" or "circular"

    def padded_size(self, h: int, w: int) -> tuple[int, int]:
        left, right, top, bottom = self.padding
        return h + top + bottom, w + left + right

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        hp, wp = self.padded_size(h, w)
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.stride, self.dilation
        return (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def conv_geometry(conv: nn.Conv2d, h: int, w: int) -> ConvGeometry:
    """The geometry of a Conv2d applied to an h x w input, padding resolved to explicit sides."""
    kh, kw = conv.kernel_size
    dh, dw = conv.dilation
    if conv.padding == "valid":
        pad = (0, 0, 0, 0)
    elif conv.padding == "same":
        th, tw = dh * (kh - 1), dw * (kw - 1)
        pad = (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    else:
        ph, pw = _pair(conv.padding)
        pad = (pw, pw, ph, ph)
    mode = conv.padding_mode
    # EfficientNet ports pad "same" TF-style with a ZeroPad2d held by the conv itself.
    static = getattr(conv, "static_padding", None)
    if isinstance(static, nn.ZeroPad2d):
        sl, sr, st, sb = static.padding
        pad = (pad[0] + sl, pad[1] + sr, pad[2] + st, pad[3] + sb)
    return ConvGeometry(conv.in_channels, conv.out_channels, (kh, kw), _pair(conv.stride), (dh, dw),
                        conv.groups, pad, mode)


@lru_cache(maxsize=512)
def coverage(g: ConvGeometry, h: int, w: int) -> torch.Tensor:
    """How many (output pixel, kernel tap) pairs read each pixel of the padded h x w input (float64)."""
    hp, wp = g.padded_size(h, w)
    ho, wo = g.output_size(h, w)
    (kh, kw), (sh, sw), (dh, dw) = g.kernel, g.stride, g.dilation
    used_h, used_w = (ho - 1) * sh + dh * (kh - 1) + 1, (wo - 1) * sw + dw * (kw - 1) + 1
    ones = torch.ones(1, 1, ho, wo, dtype=torch.float64)
    taps = torch.ones(1, 1, kh, kw, dtype=torch.float64)
    # The transpose of a stride-s conv with an all-ones kernel scatters each output back onto what it read.
    cov = F.conv_transpose2d(ones, taps, stride=(sh, sw), dilation=(dh, dw))[0, 0, :used_h, :used_w]
    return F.pad(cov, (0, wp - used_w, 0, hp - used_h))


@dataclass
class MacCount:
    """Running totals for one site."""

    macs: int = 0
    effective_macs: int = 0

    @property
    def speedup(self) -> float:
        return self.macs / self.effective_macs if self.effective_macs else float("inf")


def count_macs(module: nn.Module, x: torch.Tensor, nonzero_map: torch.Tensor | None = None) -> MacCount:
    """MACs of `module` on input x, and those with a non-zero input activation.

    `nonzero_map` may pass in the per-position non-zero count already computed by the caller: for a
    conv input (N, C, H, W) it is `(x != 0).sum((0, 1))`, for a Linear input the total count.
    """
    if isinstance(module, nn.Linear):
        nnz = int(nonzero_map) if nonzero_map is not None else int(torch.count_nonzero(x))
        return MacCount(x.numel() * module.out_features, nnz * module.out_features)
    if isinstance(module, nn.Conv2d):
        n, _, h, w = x.shape
        g = conv_geometry(module, h, w)
        ho, wo = g.output_size(h, w)
        per_filter = g.out_channels // g.groups
        total = n * g.out_channels * ho * wo * (g.in_channels // g.groups) * g.kernel[0] * g.kernel[1]
        nz = (x != 0).sum((0, 1)) if nonzero_map is None else nonzero_map
        nz = nz.to(torch.float64)
        cov = coverage(g, h, w)
        left, right, top, bottom = g.padding
        if g.padding_mode == "zeros":
            seen = (nz * cov[top:top + h, left:left + w]).sum()
        else:
            padded = F.pad(nz[None, None], (left, right, top, bottom), mode=g.padding_mode)[0, 0]
            seen = (padded * cov).sum()
        return MacCount(total, int(round(float(seen))) * per_filter)
    raise TypeError(f"no MAC count for {type(module).__name__}")

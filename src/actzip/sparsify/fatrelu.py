"""FATReLU (Kurtz et al. 2020): a per-channel threshold below which a non-negative activation is set
to zero, applied at the input of each Conv2d/Linear site whose activations are non-negative.

Thresholds come from calibration data for a target *extra* sparsity e: in each site, every channel
drops the same fraction q of its non-zero activations (the smallest ones), with q chosen so that the
site gains e of all its activations as zeros: q = e / (1 - zeros already there), capped below 1.
Quantiles are streamed from per-channel log-magnitude histograms (1/16 octave), so calibrating on
many images holds no activations. Usable as-is on a trained model or before fine-tuning; the gradient
flows through the kept activations.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..sites import Site, capture

BINS_PER_OCTAVE = 16
LOG2_LO, LOG2_HI = -24, 16
N_BINS = (LOG2_HI - LOG2_LO) * BINS_PER_OCTAVE


@dataclass(frozen=True)
class FATReLU:
    """FATReLU thresholds: per channel, the activation value below which it is set to zero.

    Args:
        extra_sparsity: the fraction of each channel's non-zero activations to zero, in [0, 1).
        calibration_images: training images the thresholds are calibrated on.
        batch_size: images per forward pass while calibrating.
    """

    extra_sparsity: float = 0.1
    calibration_images: int = 256
    batch_size: int = 64

    def __post_init__(self):
        if not 0 <= self.extra_sparsity < 1:
            raise ValueError(f"extra sparsity must be in [0, 1), got {self.extra_sparsity}")


class _ChannelHistogram:
    def __init__(self, channels: int):
        self.counts = torch.zeros(channels, N_BINS + 1, dtype=torch.int64)  # last column: zeros
        self.negative = False

    def update(self, x: torch.Tensor, axis: int):
        x = x.detach().float().movedim(axis, 0).reshape(x.shape[axis], -1)
        if (x < 0).any():
            self.negative = True
        pos = x.clamp_min(0)
        bins = ((torch.log2(pos.clamp_min(2.0 ** LOG2_LO)) - LOG2_LO) * BINS_PER_OCTAVE).floor().clamp(0, N_BINS - 1)
        bins = torch.where(pos > 0, bins.long(), torch.full_like(bins, N_BINS, dtype=torch.long))
        offsets = torch.arange(x.shape[0]).unsqueeze(1) * (N_BINS + 1)
        self.counts += torch.bincount((bins + offsets).flatten(), minlength=x.shape[0] * (N_BINS + 1)).reshape(
            x.shape[0], N_BINS + 1)

    def thresholds(self, extra: float) -> torch.Tensor:
        counts = self.counts.double()
        zeros = counts[:, N_BINS].sum()
        total = counts.sum()
        q = min(extra / max(1.0 - float(zeros / total), 1e-9), 0.999) if total else 0.0
        nonzero = counts[:, :N_BINS]
        cum = nonzero.cumsum(1)
        target = q * nonzero.sum(1, keepdim=True)
        # the lower edge of the first bin where the cumulative count reaches the target
        b = torch.searchsorted(cum, target).clamp(max=N_BINS - 1).squeeze(1)
        t = torch.pow(2.0, LOG2_LO + b.double() / BINS_PER_OCTAVE)
        return torch.where(target.squeeze(1) > 0, t, torch.zeros_like(t)).float()


def calibrate_thresholds(model: nn.Module, images: Dataset, config: FATReLU) -> dict[str, torch.Tensor]:
    """Per-site, per-channel thresholds for `config.extra_sparsity` (sites with negative values get none)."""
    hists: dict[str, _ChannelHistogram] = {}

    def observe(site: Site, module: nn.Module, x: torch.Tensor):
        if site.name not in hists:
            hists[site.name] = _ChannelHistogram(x.shape[site.channel_axis])
        hists[site.name].update(x, site.batched_channel_axis)

    was_training = model.training
    model.eval()
    count = min(len(images), config.calibration_images)
    loader = DataLoader(Subset(images, range(count)), batch_size=config.batch_size)
    try:
        with capture(model, observe), torch.no_grad():
            for x, _ in loader:
                model(x)
    finally:
        model.train(was_training)
    return {name: h.thresholds(config.extra_sparsity) for name, h in hists.items() if not h.negative}


class FATReLUHandle:
    def __init__(self, model: nn.Module, thresholds: dict[str, torch.Tensor]):
        self.thresholds = thresholds
        self._stack = contextlib.ExitStack()
        self.sites = self._stack.enter_context(capture(model, self._apply))

    def _apply(self, site: Site, module: nn.Module, x: torch.Tensor):
        t = self.thresholds.get(site.name)
        if t is None:
            return None
        shape = [1] * x.ndim
        shape[site.batched_channel_axis] = -1
        return x * (x > t.to(x.dtype).reshape(shape))

    def detach(self) -> None:
        self._stack.close()


def attach_fatrelu(model: nn.Module, thresholds: dict[str, torch.Tensor]) -> FATReLUHandle:
    return FATReLUHandle(model, thresholds)

"""Activation penalties computed on the tensors already flowing through the forward pass.

- L1: sum over sites of alpha_site * mean |x|. The default weighs every site by the same global
  alpha on the *mean* magnitude, so a site's pull does not grow with its resolution (with a sum,
  the 112x112 early layers, which are dense and cheap to skip least, would dominate the loss);
  `per_site` overrides alpha by site name, `normalize="sum"` gives the per-element sum instead.
  `normalize="macs"` weighs each site's mean |x| by the MACs of the layer that reads it, relative
  to the mean over the sites (so alpha keeps about the scale of "mean"): every activation is then
  pulled towards zero in proportion to the MACs a zero-skipping engine would skip with it, which
  moves the sparsity to where it pays (on MobileNet, the depthwise outputs that feed the 1x1
  convs, which spend C_out MACs per value against 9 for a depthwise input).
- Hoyer: sum over sites of alpha_site * (||x||_1)^2 / ||x||_2^2, per sample and averaged over the
  batch: scale-invariant, so it favours zeros without just shrinking the activations.

Only forwards in training mode with gradients enabled are penalised; `take()` hands the sum of the
current forward to the loss and forgets it, so no activation outlives the step.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from ..macs import count_macs
from ..sites import Site, capture

NORMALIZATIONS = ("mean", "sum", "macs")


def _zeros_masked_by_producer(x: torch.Tensor) -> bool:
    """True if x is the output of a ReLU (or ReLU6 / hardtanh with a min >= 0): x >= 0, and that op's
    backward zeroes the gradient wherever x is at its floor, so adding a constant there is harmless."""
    fn = type(x.grad_fn).__name__
    return fn == "ReluBackward0" or (fn == "HardtanhBackward0" and x.grad_fn._saved_min_val >= 0)


class _MeanAbs(torch.autograd.Function):
    """mean |x| with a cheap backward. Behind a ReLU, sign(x) is 1 wherever the ReLU lets gradient
    through, so the gradient is returned as one scalar expanded to x's shape: autograd adds it to
    the other branches in one pass over memory, with no sign tensor (on memory-bound nets like
    MobileNet this is the difference between ~5 % and ~25 % extra step time). The forward sums
    with `sum` (of |x| unless masked): on CPU `vector_norm(x, 1)` takes ~10x as long."""

    @staticmethod
    def forward(ctx, x, masked):
        ctx.masked = masked
        ctx.save_for_backward(x)
        return (x.sum() if masked else x.abs().sum()) / x.numel()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        scale = grad / x.numel()
        if ctx.masked:
            return scale.expand(x.shape), None
        return torch.sign(x) * scale, None


def mean_abs_penalty(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha * mean |x|, differentiable (see _MeanAbs)."""
    return alpha * _MeanAbs.apply(x, _zeros_masked_by_producer(x))


class _HoyerSquare(torch.autograd.Function):
    """Batch mean of (sum |x_i|)^2 / sum x_i^2 per sample, with its gradient written in one expression:
    d/dx = 2 l1 / l2sq * sign(x) - 2 l1^2 / l2sq^2 * x, per sample. Behind a ReLU sign(x) can be 1
    (as in _MeanAbs), so the gradient is one fused pass, a - b * x, instead of four. The per-sample
    sums reduce over the sample's dimensions in place: flatten(1) copies a channels_last map."""

    @staticmethod
    def forward(ctx, x, masked):
        dims = tuple(range(1, x.ndim))
        l1 = x.sum(dims) if masked else x.abs().sum(dims)
        l2sq = torch.linalg.vector_norm(x, 2, dim=dims).square().clamp_min(1e-12)
        ctx.masked = masked
        ctx.save_for_backward(x, l1, l2sq)
        return (l1.square() / l2sq).mean()

    @staticmethod
    def backward(ctx, grad):
        x, l1, l2sq = ctx.saved_tensors
        shape = (-1,) + (1,) * (x.ndim - 1)
        scale = grad / x.shape[0]
        a = (2 * l1 / l2sq * scale).reshape(shape)
        b = (2 * l1.square() / l2sq.square() * scale).reshape(shape)
        if ctx.masked:
            return torch.addcmul(a, x, b, value=-1), None
        return torch.sign(x) * a - x * b, None


@dataclass(frozen=True)
class L1:
    """The L1 penalty on activation maps (Georgiadis): alpha times each site's mean |x|.

    Args:
        alpha: the penalty strength of every site.
        per_site: site name -> its own strength, overriding alpha.
        normalize: "mean" |x| per site, "sum" (per sample), or "macs" (the mean, weighted by the
            MACs of the layer that reads the site).
    """

    alpha: float = 1e-4
    per_site: dict = field(default_factory=dict)  # site name -> alpha
    normalize: str = "mean"  # "mean", "sum" (per sample) or "macs" (mean, weighted by the reader's MACs)

    def __post_init__(self):
        if self.alpha < 0 or any(a < 0 for a in self.per_site.values()):
            raise ValueError("L1 strengths must be non-negative")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {self.normalize!r}")

    def term(self, x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
        scale = x.numel() / x.shape[0] if self.normalize == "sum" else 1.0
        return mean_abs_penalty(x, alpha * scale)


@dataclass(frozen=True)
class Hoyer:
    """The Hoyer-square penalty on activation maps: (sum |x|)^2 / sum x^2 per site, scale-free.

    Args:
        alpha: the penalty strength of every site.
        per_site: site name -> its own strength, overriding alpha.
    """

    alpha: float = 1e-4
    per_site: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.alpha < 0 or any(a < 0 for a in self.per_site.values()):
            raise ValueError("Hoyer strengths must be non-negative")

    def term(self, x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
        return alpha * _HoyerSquare.apply(x, _zeros_masked_by_producer(x))


class PenaltyHandle:
    """The penalty of the current forward (`take`) and `detach`."""

    def __init__(self, model: nn.Module, config: L1 | Hoyer):
        self.config = config
        self.model = model
        self._terms: list[tuple[torch.Tensor, int]] = []  # (term, MACs of the reading layer) per site
        self._macs: dict[tuple, int] = {}  # per site and input shape: MACs per sample
        self._stack = contextlib.ExitStack()
        self.sites = self._stack.enter_context(capture(model, self._observe))

    def _observe(self, site: Site, module: nn.Module, x: torch.Tensor):
        if not (self.model.training and torch.is_grad_enabled()):
            return None
        alpha = self.config.per_site.get(site.name, self.config.alpha)
        if alpha:
            macs = 0
            if getattr(self.config, "normalize", None) == "macs":
                key = (site.name, tuple(x.shape[1:]))
                if key not in self._macs:
                    self._macs[key] = count_macs(module, x[:1].detach()).macs
                macs = self._macs[key]
            self._terms.append((self.config.term(x, alpha), macs))
        return None

    def take(self) -> torch.Tensor:
        """The summed penalty of the forward since the last take (0 if none), then forget it."""
        terms, self._terms = self._terms, []
        if not terms:
            return torch.zeros(())
        total_macs = sum(m for _, m in terms)
        if total_macs:  # MAC weights, averaging 1 over the sites
            return sum(t * (m * len(terms) / total_macs) for t, m in terms)
        return sum(t for t, _ in terms)

    def detach(self) -> None:
        self._terms = []
        self._stack.close()


def attach_penalty(model: nn.Module, config: L1 | Hoyer) -> PenaltyHandle:
    return PenaltyHandle(model, config)

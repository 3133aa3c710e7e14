"""Activation penalties computed on the tensors already flowing through the forward pass.

- L1: sum over sites of alpha_site * mean |x|. The default weighs every site by the same global
  alpha on the *mean* magnitude, so a site's pull does not grow with its resolution (with a sum,
  the 112x112 early layers, which are dense and cheap to skip least, would dominate the loss);
  `per_site` overrides alpha by site name, `normalize="sum"` gives the per-element sum instead.
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

from ..sites import Site, capture


@dataclass(frozen=True)
class L1:
    alpha: float = 1e-4
    per_site: dict = field(default_factory=dict)  # site name -> alpha
    normalize: str = "mean"  # "mean" or "sum" (per sample)

    def __post_init__(self):
        if self.alpha < 0 or any(a < 0 for a in self.per_site.values()):
            raise ValueError("L1 strengths must be non-negative")
        if self.normalize not in ("mean", "sum"):
            raise ValueError(f"normalize must be 'mean' or 'sum', got {self.normalize!r}")

    def term(self, x: torch.Tensor) -> torch.Tensor:
        a = x.abs()
        return a.mean() if self.normalize == "mean" else a.sum() / x.shape[0]


@dataclass(frozen=True)
class Hoyer:
    alpha: float = 1e-4
    per_site: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.alpha < 0 or any(a < 0 for a in self.per_site.values()):
            raise ValueError("Hoyer strengths must be non-negative")

    def term(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        l1 = flat.abs().sum(1)
        l2 = flat.pow(2).sum(1)
        return (l1.pow(2) / l2.clamp_min(1e-12)).mean()


class PenaltyHandle:
    """The penalty of the current forward (`take`) and `detach`."""

    def __init__(self, model: nn.Module, config: L1 | Hoyer):
        self.config = config
        self.model = model
        self._total: torch.Tensor | None = None
        self._stack = contextlib.ExitStack()
        self.sites = self._stack.enter_context(capture(model, self._observe))

    def _observe(self, site: Site, module: nn.Module, x: torch.Tensor):
        if not (self.model.training and torch.is_grad_enabled()):
            return None
        alpha = self.config.per_site.get(site.name, self.config.alpha)
        if alpha:
            term = alpha * self.config.term(x)
            self._total = term if self._total is None else self._total + term
        return None

    def take(self) -> torch.Tensor:
        """The summed penalty of the forward since the last take (0 if none), then forget it."""
        total, self._total = self._total, None
        if total is None:
            return torch.zeros(())
        return total

    def detach(self) -> None:
        self._total = None
        self._stack.close()


def attach_penalty(model: nn.Module, config: L1 | Hoyer) -> PenaltyHandle:
    return PenaltyHandle(model, config)

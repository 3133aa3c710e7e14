"""How likely an image's top-1 survives output noise, from its logit margin: the smooth estimate of
agreement that the lossy evaluation reports beside the counted one (`actzip.lossy.evaluate`)."""

from __future__ import annotations

import numpy as np
import torch


def margin_noise(reference: np.ndarray, outputs: np.ndarray) -> np.ndarray:
    """Per image (rows of logits): its top-2 margin in `reference`, the power per logit of the
    noise `outputs` add to it, and the squared noise on that margin itself; (3, N)."""
    reference, outputs = np.asarray(reference, np.float64), np.asarray(outputs, np.float64)
    rows = np.arange(len(reference))
    if reference.shape[1] < 2:
        return np.stack([np.full(len(reference), np.inf), np.zeros(len(reference)), np.zeros(len(reference))])
    top2, top1 = np.argsort(reference, axis=1)[:, -2:].T
    noise = outputs - reference
    margin = reference[rows, top1] - reference[rows, top2]
    return np.stack([margin, np.square(noise).mean(axis=1), np.square(noise[rows, top1] - noise[rows, top2])])


def margin_kappa(stats: np.ndarray) -> float:
    """From `margin_noise` stats: the noise's mean square on the top-2 margins over twice its
    power per logit (1 when every logit gets the same independent noise)."""
    total = 2 * stats[1].sum()
    return float(stats[2].sum() / total) if total > 0 else 1.0


def chance_from_margins(stats: np.ndarray) -> np.ndarray:
    """Per image, from `margin_noise` stats of a set of images: the chance its top-1 survives
    noise of its power. The noise on a margin is taken as Gaussian with variance 2 * kappa * power,
    where kappa, pooled over the set, is how much more of the noise falls on the top-2 margin than
    on a random pair of logits (1 for noise alike on every logit; a 10-class network's noise leans
    on the classes it tells apart). Phi(margin / sqrt(2 kappa power))."""
    margin, power, _ = stats
    spread = 2 * margin_kappa(stats) * power
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(spread > 0, margin / np.sqrt(spread), np.where(margin > 0, np.inf, 0.0))
    return torch.special.ndtr(torch.from_numpy(z)).numpy()


def agreement_chance(reference: np.ndarray, outputs: np.ndarray) -> np.ndarray:
    """Per image (rows of logits), the chance that its top-1 survives noise like what `outputs`
    show against `reference` (`chance_from_margins`): a smooth stand-in for 1 - flipped. One
    image's noise, one draw, decides whether it flips; its power says how likely flips are."""
    return chance_from_margins(margin_noise(reference, outputs))

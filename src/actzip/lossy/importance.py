"""How strongly each channel of each activation site reaches the model's output.

The channels of one activation map matter very differently: one feeds large weights, another a
ReLU6 that stays saturated whatever it holds. For a small error d at a site, the output moves by
J d, and with errors independent between values, E ||J d||^2 = sum_v (J^T J)_vv d_v^2. So the
diagonal of J^T J, averaged over a channel's values, is the squared output error one unit of
squared error in that channel costs. It is estimated without forming J: for a random direction
u with unit-variance entries, E (J^T u)_v^2 = (J^T J)_vv, and J^T u is one backward pass of
(u . output). This is the squared-error counterpart of the Fisher information (which would
weigh the output by the softmax's curvature), so it fits the relative squared output error that
`actzip.lossy.budgets` allocates.

The weights are relative within a site (mean 1 over its channels); the site's own sensitivity,
measured by re-quantizing it, keeps the scale. The gradient is a linearization: a channel it
calls irrelevant can matter for a coarse error (a saturated ReLU6 leaves saturation), so weights
are floored at WEIGHT_FLOOR of the site's mean.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from ..sites import Site, capture

DIRECTIONS = 2  # random output directions per batch
WEIGHT_FLOOR = 1e-2  # the smallest weight, as a fraction of the site's mean


def channel_weights(model: nn.Module, batches: Iterable[torch.Tensor], sites: list[Site],
                    seed: int = 0) -> dict[str, np.ndarray]:
    """Per site, one weight per channel (mean 1): the mean of diag(J^T J) over the channel's values,
    estimated with DIRECTIONS random output directions per batch, floored at WEIGHT_FLOOR."""
    generator = torch.Generator().manual_seed(seed)
    sums = {s.name: 0.0 for s in sites}
    probes: dict[str, torch.Tensor] = {}

    def probe(site: Site, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        # a zero added to the input: its gradient is the input's, also when no parameter needs one
        delta = torch.zeros_like(x, requires_grad=True)
        probes[site.name] = delta
        return x + delta

    channel_axis = {s.name: s.batched_channel_axis for s in sites}
    with capture(model, probe), torch.enable_grad():
        for x in batches:
            probes.clear()
            out = model(x)
            names = list(probes)
            for k in range(DIRECTIONS):  # one forward, a backward pass per direction
                direction = torch.randn(out.shape, generator=generator, dtype=out.dtype)
                grads = torch.autograd.grad((out * direction).sum(), [probes[n] for n in names], allow_unused=True,
                                            retain_graph=k < DIRECTIONS - 1)
                for name, g in zip(names, grads):
                    if g is not None:
                        axis = channel_axis[name]
                        other = tuple(d for d in range(g.ndim) if d != axis)
                        sums[name] = sums[name] + g.square().sum(other).double().numpy()
    weights = {}
    for s in sites:
        channels = s.shape[channel_axis[s.name] - 1]  # s.shape has no batch dimension
        w = np.broadcast_to(np.asarray(sums[s.name], float), (channels,))
        if w.mean() > 0:
            floored = np.maximum(w, WEIGHT_FLOOR * w.mean())
            weights[s.name] = floored / floored.mean()
        else:  # the output does not depend on this site (to first order): no channel stands out
            weights[s.name] = np.ones_like(w)
    return weights

"""Activation sites: the input tensor of every Conv2d and Linear call, except the network's own input.

Sites are found by running the model: a module called twice in one forward gives two sites
("block.conv" and "block.conv#2"), in call order. Hooks live only inside `capture(...)`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from .errors import ActzipError

SITE_MODULES = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class Site:
    index: int  # position in call order
    name: str  # module path, with "#k" for the k-th call (k >= 2) of the same module
    module_name: str
    module_type: str
    shape: tuple[int, ...]  # shape of the activation map without the batch dimension

    @property
    def channel_axis(self) -> int:
        """Channels are dim 1 of a conv input (N, C, H, W) and the last dim of a Linear input."""
        return 1 if len(self.shape) == 3 else -1

    @property
    def batched_channel_axis(self) -> int:
        """channel_axis as a non-negative dim of the batched map (N, *shape)."""
        return self.channel_axis % (len(self.shape) + 1)


# A callback may return a tensor to replace the activation the module receives (None keeps it).
SiteCallback = Callable[[Site, nn.Module, torch.Tensor], "torch.Tensor | None"]


def site_modules(model: nn.Module) -> dict[nn.Module, str]:
    """Every Conv2d/Linear submodule and its path (the root itself is named by its class)."""
    found = {m: (n or type(m).__name__) for n, m in model.named_modules() if isinstance(m, SITE_MODULES)}
    if not found:
        raise ActzipError(f"{type(model).__name__} has no Conv2d or Linear layer: there are no activation sites")
    return found


class _Recorder:
    """Names each site call and checks that every forward visits the same sites in the same order."""

    def __init__(self, model: nn.Module, callback: SiteCallback):
        self.names = site_modules(model)
        self.callback = callback
        self.sites: list[Site] = []
        self._frozen = False
        self._calls: dict[nn.Module, int] = {}
        self._position = 0
        self._model_input: torch.Tensor | None = None

    def start_forward(self, module, args, kwargs):
        if self.sites and self._position:
            self._check_complete()
        self._calls.clear()
        self._position = 0
        self._model_input = args[0] if args else next(iter(kwargs.values()), None)

    def site_call(self, module, args):
        x = args[0]
        if x is self._model_input:
            return
        call = self._calls.get(module, 0) + 1
        self._calls[module] = call
        base = self.names[module]
        name = base if call == 1 else f"{base}#{call}"
        if not self._frozen:
            site = Site(len(self.sites), name, base, type(module).__name__, tuple(x.shape[1:]))
            self.sites.append(site)
        else:
            if self._position >= len(self.sites) or self.sites[self._position].name != name:
                raise ActzipError(f"the model's call order changed between batches at site {name!r}; "
                                  "actzip needs a static graph")
            site = self.sites[self._position]
            if tuple(x.shape[1:]) != site.shape:
                raise ActzipError(f"site {name} changed shape from {site.shape} to {tuple(x.shape[1:])}: "
                                  "all images of one run must have the same size")
        self._position += 1
        replaced = self.callback(site, module, x)
        if replaced is not None:
            return (replaced, *args[1:])

    def end_forward(self, *_):
        if not self._frozen:
            self._frozen = True
        else:
            self._check_complete()
        self._position = 0

    def _check_complete(self):
        if self._position != len(self.sites):
            raise ActzipError(f"a forward visited {self._position} sites, an earlier one {len(self.sites)}")


@contextlib.contextmanager
def capture(model: nn.Module, callback: SiteCallback) -> Iterator[list[Site]]:
    """Call `callback(site, module, activation)` for every site in every forward inside the block;
    a tensor it returns replaces the activation the module receives.

    Yields the list of sites, filled by the first forward. The hooks are removed on exit, errors included.
    """
    rec = _Recorder(model, callback)
    handles = [model.register_forward_pre_hook(rec.start_forward, with_kwargs=True),
               model.register_forward_hook(rec.end_forward)]
    try:
        handles += [m.register_forward_pre_hook(rec.site_call) for m in rec.names]
        yield rec.sites
    finally:
        for h in handles:
            h.remove()


def find_sites(model: nn.Module, example: torch.Tensor) -> list[Site]:
    """The sites of `model` for inputs shaped like `example` (one forward, no gradients)."""
    with capture(model, lambda *_: None) as sites, torch.no_grad():
        model(example)
    return list(sites)

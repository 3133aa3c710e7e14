"""Semi-structured activation sparsity (Grimaldi et al. 2023): a static H x W mask on the output of
each selected Conv2d, shared by all its output channels and all images. In im2col terms a masked
output pixel is a whole GEMM row that a runtime never computes (`actzip.runtime`).

As in the published code, the mask multiplies the conv output *before* BatchNorm, so a masked
pixel leaves the BN as its bias; every Conv2d is selected by default (1x1 convs, the first conv,
or convs by name pattern can be left dense) and Linear layers stay dense. Masks ramp in with a
polynomial schedule: dense for the first `warmup` fraction of the steps, then
s(p) = s_target * (1 - (1 - p)^2) as p goes 0 -> 1 until the `ramp_end` fraction, then frozen.

Which pixels are masked comes from a score per output position, lowest first:
- "random" (published): one uniform random map at the largest output resolution, average-pooled to
  each conv's resolution, so convs of one resolution share a mask;
- "magnitude" (ours): the mean |output| of the conv at each position over calibration images (after
  its BatchNorm would be better still, but this needs no knowledge of the graph), so positions that
  carry little signal go first;
- "spread" (ours): the same magnitudes, each conv's divided by its mean and averaged over the convs
  of one resolution (so they share a mask, as random masks do, and a runtime can hand kept pixels
  from one to the next), then spread out: every 2x2 window loses its weakest pixel before any
  window loses a second. On mobilenet-v1 plain "magnitude" masks clustered on weak regions and
  differed from conv to conv, and lost 0.7 pt more than random ones at s = 0.2;
- "taylor" (ours): like "spread", but a position's weight is what zeroing it costs the training
  loss to first order, |sum over channels of output * d loss / d output|, averaged over the
  calibration images (Molchanov et al. 2017's pruning criterion, per pixel instead of per
  channel): it sees through the BatchNorm scale, the ReLU that follows and everything downstream,
  where magnitude sees only the conv's own output.
Scores and masks are buffers (`pixel_score`, `pixel_mask`) in the state dict; a growing sparsity
only adds pixels to the mask. Under DDP the buffers are broadcast from rank 0 with the model, so
every rank masks the same pixels (the published runs drew different masks per GPU).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

CRITERIA = ("random", "magnitude", "spread", "taylor")
DATA_CRITERIA = ("magnitude", "spread", "taylor")  # the criteria that need calibration images


@dataclass(frozen=True)
class PixelMask:
    """Semi-structured pixel masks on conv outputs (Grimaldi et al.), ramped in during training.

    Args:
        sparsity: the fraction of output pixels masked in each selected conv, in [0, 1).
        criterion: which pixels to mask: "random" (the published one), "magnitude", "spread" or "taylor".
        skip_1x1: leave 1x1 convs unmasked.
        skip_first: leave the first conv (the one that sees the image) dense.
        include: a regex: only convs whose name matches.
        exclude: a regex: no conv whose name matches.
        warmup: the fraction of the training steps trained dense.
        ramp_end: the fraction of the steps at which the target is reached and the masks freeze.
        seed: seeds the random criterion.
        calibration_images: images for the criteria that score positions on data.
    """

    sparsity: float = 0.2  # fraction of output pixels masked in each selected conv, in [0, 1)
    criterion: str = "random"
    skip_1x1: bool = False
    skip_first: bool = False  # leave the first conv (the one that sees the image) dense
    include: str | None = None  # regex: only convs whose name matches
    exclude: str | None = None  # regex: no conv whose name matches
    warmup: float = 0.1  # fraction of the steps trained dense
    ramp_end: float = 0.5  # fraction of the steps at which the target is reached and masks freeze
    seed: int = 0
    calibration_images: int = 256  # for the criteria that score positions on data (DATA_CRITERIA)

    def __post_init__(self):
        if not 0 <= self.sparsity < 1:
            raise ValueError(f"pixel sparsity must be in [0, 1), got {self.sparsity}")
        if self.criterion not in CRITERIA:
            raise ValueError(f"pixel criterion must be one of {', '.join(CRITERIA)}, got {self.criterion!r}")
        if not 0 <= self.warmup < self.ramp_end <= 1:
            raise ValueError(f"need 0 <= warmup < ramp_end <= 1, got {self.warmup}, {self.ramp_end}")
        for pattern in (self.include, self.exclude):
            if pattern is not None:
                re.compile(pattern)

    def sparsity_at(self, progress: float) -> float:
        """The schedule: the masked fraction after `progress` (0..1) of the training steps."""
        if progress < self.warmup:
            return 0.0
        p = min(1.0, (progress - self.warmup) / (self.ramp_end - self.warmup))
        return self.sparsity * (1 - (1 - p) ** 2)


def selected_convs(model: nn.Module, config: PixelMask) -> dict[str, nn.Conv2d]:
    """The convs that get a mask, by name, in module order."""
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    out = {}
    for i, (name, conv) in enumerate(convs):
        if config.skip_first and i == 0 or config.skip_1x1 and conv.kernel_size == (1, 1):
            continue
        if config.include and not re.search(config.include, name) or config.exclude and re.search(config.exclude,
                                                                                                   name):
            continue
        out[name] = conv
    return out


def mask_from_scores(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """1 everywhere but at the round(sparsity * H * W) lowest scores (ties: the earlier position)."""
    flat = score.reshape(-1)
    k = round(sparsity * flat.numel())
    mask = torch.ones_like(flat)
    if k:
        mask[torch.sort(flat, stable=True).indices[:k]] = 0
    return mask.reshape(1, 1, *score.shape)


def _apply_mask(conv: nn.Conv2d, args, output: torch.Tensor) -> torch.Tensor:
    mask = conv.pixel_mask
    if mask.shape[-2:] != output.shape[-2:]:
        raise ValueError(f"pixel mask of {tuple(mask.shape[-2:])} does not fit the conv output "
                         f"{tuple(output.shape[-2:])}: masks are made for one input size")
    return output * mask.to(output.dtype)


class PixelMaskHandle:
    """Masks attached to a model: `update(progress)` follows the schedule, `detach()` removes the
    hooks (the buffers stay, so the state dict still records the masks)."""

    def __init__(self, model: nn.Module, convs: dict[str, nn.Conv2d], config: PixelMask):
        self.model, self.convs, self.config = model, convs, config
        self.handles = [c.register_forward_hook(_apply_mask) for c in convs.values()]
        self.sparsity = None

    def set_sparsity(self, sparsity: float) -> None:
        if sparsity != self.sparsity:
            for conv in self.convs.values():
                conv.pixel_mask.copy_(mask_from_scores(conv.pixel_score, sparsity))
            self.sparsity = sparsity

    def update(self, progress: float) -> float:
        """Set the masks for `progress` (0..1) through training; returns the sparsity now in force."""
        self.set_sparsity(self.config.sparsity_at(progress))
        return self.sparsity

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def _output_sizes(model: nn.Module, convs: dict[str, nn.Conv2d], example: torch.Tensor) -> dict[str, tuple]:
    sizes = {}
    hooks = [c.register_forward_hook(lambda m, a, o, n=n: sizes.__setitem__(n, tuple(o.shape[-2:])))
             for n, c in convs.items()]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return sizes


def _random_scores(sizes: dict[str, tuple], seed: int) -> dict[str, torch.Tensor]:
    big = max(sizes.values(), key=lambda s: s[0] * s[1])
    base = torch.rand(1, 1, *big, generator=torch.Generator().manual_seed(seed))
    return {n: F.adaptive_avg_pool2d(base, s)[0, 0] for n, s in sizes.items()}


def _calibration_batches(images: Dataset, config: PixelMask) -> DataLoader:
    return DataLoader(Subset(images, range(min(len(images), config.calibration_images))), batch_size=64)


def _observed_scores(model: nn.Module, convs: dict[str, nn.Conv2d], images: Dataset, config: PixelMask,
                     ) -> dict[str, torch.Tensor]:
    """Per conv and output position, summed over the calibration images: |output| averaged over
    channels ("magnitude", "spread"), or |sum over channels of output * d loss / d output| ("taylor")."""
    taylor = config.criterion == "taylor"
    sums: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}

    def add(name: str, score: torch.Tensor) -> None:
        sums[name] = sums[name] + score if name in sums else score

    def observe(name: str, output: torch.Tensor) -> None:
        if taylor:
            outputs[name] = output
        else:
            add(name, output.detach().abs().mean(dim=1).sum(0))

    hooks = [c.register_forward_hook(lambda m, a, o, n=n: observe(n, o)) for n, c in convs.items()]
    was_training = model.training
    try:
        model.eval()
        with torch.set_grad_enabled(taylor):
            for x, y in _calibration_batches(images, config):
                if not taylor:
                    model(x)
                    continue
                # gradients of the outputs only (no parameter keeps a .grad); the input requires
                # grad so that the graph exists even for a frozen model
                loss = F.cross_entropy(model(x.requires_grad_(True)), y, reduction="sum")
                names = list(outputs)
                grads = torch.autograd.grad(loss, [outputs[n] for n in names])
                for n, g in zip(names, grads):
                    add(n, (outputs[n].detach() * g).sum(dim=1).abs().sum(0))
                outputs.clear()
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return sums


def _spread_scores(magnitudes: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Scores whose order is: each 2x2 window's weakest pixel (weakest window first), then each
    window's second weakest, and so on; from magnitudes shared by the convs of one resolution."""
    by_size: dict[tuple[int, int], list[torch.Tensor]] = {}
    for m in magnitudes.values():
        by_size.setdefault(tuple(m.shape), []).append(m / m.mean().clamp_min(1e-12))
    spread = {}
    for (h, w), maps in by_size.items():
        shared = torch.stack(maps).mean(0)
        unit = shared / (shared.max() * 1.001 + 1e-12)  # in [0, 1): breaks ties within one rank
        padded = F.pad(unit, (0, w % 2, 0, h % 2), value=2.0)[None, None]  # odd edges: padding ranks last
        windows = F.pixel_unshuffle(padded, 2)  # (1, 4, h/2, w/2): the four pixels of each window
        ranked = F.pixel_shuffle(windows.argsort(dim=1).argsort(dim=1).float(), 2)[0, 0]
        spread[(h, w)] = (ranked + padded[0, 0].clamp(max=1.0))[:h, :w]
    return {n: spread[tuple(m.shape)] for n, m in magnitudes.items()}


def attach_pixel_masks(model: nn.Module, config: PixelMask, example: torch.Tensor,
                       images: Dataset | None = None) -> PixelMaskHandle:
    """Give each selected conv of `model` a mask for inputs shaped like `example` (masks are made
    for one input size), scored by `config.criterion` (`images` are the calibration data for
    "magnitude" and "spread"), and start dense. Convs that already carry scores (a resumed run) keep them."""
    convs = selected_convs(model, config)
    if not convs:
        raise ValueError("no Conv2d is selected for pixel masks (check include/exclude/skip settings)")
    fresh = {n: c for n, c in convs.items() if not hasattr(c, "pixel_score")}
    if fresh:
        sizes = _output_sizes(model, fresh, example)
        if config.criterion in DATA_CRITERIA:
            if images is None:
                raise ValueError(f"the {config.criterion} criterion needs calibration images")
            scores = _observed_scores(model, fresh, images, config)
            if config.criterion in ("spread", "taylor"):
                scores = _spread_scores(scores)
        else:
            scores = _random_scores(sizes, config.seed)
        for name, conv in fresh.items():
            conv.register_buffer("pixel_score", scores[name].float().contiguous())
            conv.register_buffer("pixel_mask", torch.ones(1, 1, *sizes[name]))
    handle = PixelMaskHandle(model, convs, config)
    handle.set_sparsity(0.0)
    return handle


def restore_pixel_masks(model: nn.Module, state: dict[str, torch.Tensor]) -> PixelMaskHandle | None:
    """Recreate the mask buffers and hooks recorded in a state dict (before loading it), so a
    trained masked model loads and runs masked; None if the state has no masks."""
    names = [k[: -len(".pixel_mask")] for k in state if k.endswith(".pixel_mask")]
    if not names:
        return None
    modules = dict(model.named_modules())
    convs = {}
    for name in names:
        conv = modules.get(name)
        if not isinstance(conv, nn.Conv2d) or f"{name}.pixel_score" not in state:
            raise ValueError(f"the state dict holds a pixel mask for {name!r}, which is not a Conv2d of this model")
        if not hasattr(conv, "pixel_mask"):
            conv.register_buffer("pixel_score", torch.zeros_like(state[f"{name}.pixel_score"]))
            conv.register_buffer("pixel_mask", torch.ones_like(state[f"{name}.pixel_mask"]))
        convs[name] = conv
    return PixelMaskHandle(model, convs, PixelMask())  # its hooks stay: the model runs masked


def remove_pixel_mask_hooks(model: nn.Module) -> None:
    """Stop `model` from masking (the buffers stay): what the dense baseline of a benchmark runs."""
    for m in model.modules():
        for key, hook in list(m._forward_hooks.items()):
            if hook is _apply_mask:
                del m._forward_hooks[key]


def mask_sparsity(model: nn.Module) -> dict[str, float]:
    """The masked fraction of each masked conv."""
    return {n: 1.0 - float(m.pixel_mask.mean()) for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and hasattr(m, "pixel_mask")}


__all__ = ["PixelMask", "PixelMaskHandle", "attach_pixel_masks", "mask_from_scores", "mask_sparsity",
           "remove_pixel_mask_hooks", "restore_pixel_masks", "selected_convs"]

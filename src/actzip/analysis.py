"""The main job: run a model over images and measure its activation maps site by site.

Two passes. The first calibrates one quantizer per site and bit width on the first
`calibration_images` images (the quantizers are then fixed, as they would be on a device). The
second streams every image through the model and accumulates, per site, counts, zero-skipping MACs
and the exact histogram of quantized codes. No activation tensor outlives its batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from . import __version__, codecs
from .bitcount import HISTOGRAM_BOUNDS
from .data import as_images
from .dist import all_reduce_sum, rank_and_world
from .errors import ActzipError
from .quant import QuantParams, check_bits, params_for_range
from .sites import Site, capture
from .stats import RangeStats, SiteStats

Progress = Callable[[str, int, int], None]  # (phase, images done, images in phase)


@dataclass(frozen=True)
class AnalyzeConfig:
    """What `analyze` measures, and how.

    Args:
        bits: the quantizer bit widths to measure, each 2..16.
        batch_size: images per forward pass.
        limit: analyze at most this many images (None: all).
        calibration: how the quantizer range is set: "max" of |x| or a "percentile" of it.
        percentile: the percentile of |x| for calibration="percentile".
        per_channel: one quantizer scale per channel instead of one per site.
        calibration_images: the first N images set the quantizers.
        codecs: the codecs whose real streams are measured per site and batch (the default: the
            paper's baseline and its coder, our fast coder, a general one; codecs.names() for all).
    """

    bits: tuple[int, ...] = (8, 16)
    batch_size: int = 16
    limit: int | None = None
    calibration: str = "max"  # or "percentile"
    percentile: float = 99.99
    per_channel: bool = False
    calibration_images: int = 64
    codecs: tuple[str, ...] = ("zvc", "seg", "ctxrans", "zstd")  # real streams per site and batch: the
    #   paper's baseline and its coder, our fast coder, a general one (codecs.names() for every codec)

    def __post_init__(self):
        if not self.bits:
            raise ValueError("at least one bit width is needed")
        for b in self.bits:
            check_bits(b)
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be at least 1, got {self.limit}")
        if self.calibration not in ("max", "percentile"):
            raise ValueError(f"calibration must be 'max' or 'percentile', got {self.calibration!r}")
        if self.calibration_images < 1:
            raise ValueError("calibration needs at least one image")
        for name in self.codecs:
            codecs.get(name)  # unknown names fail here, before any work


@dataclass
class Measurement:
    """What analyze found: the sites in call order, their quantizers and statistics."""

    sites: list[Site]
    quantizers: dict[str, dict[int, QuantParams]]
    stats: dict[str, SiteStats]
    images: int


def batches(images: Dataset, count: int, batch_size: int, progress: Progress | None, phase: str,
             shard: tuple[int, int] = (0, 1)):
    """The batches of the first `count` images; with shard (rank, world), only every world-th batch
    from rank on, so that each batch is the one a single process would form."""
    rank, world = shard
    own = [i for start in range(rank * batch_size, count, world * batch_size)
           for i in range(start, min(start + batch_size, count))]
    loader = DataLoader(Subset(images, own), batch_size=batch_size, shuffle=False)
    done = 0
    for x, _ in loader:
        yield x
        done += len(x) * world  # progress of the whole job, as seen from this rank
        if progress:
            progress(phase, min(done, count), count)


def calibrate(model: nn.Module, images: Dataset, config: AnalyzeConfig,
              progress: Progress | None = None) -> tuple[list[Site], dict[str, dict[int, QuantParams]]]:
    """The sites, and one quantizer per site and bit width from the first `config.calibration_images`
    images (every rank of a distributed job calibrates on the same images, so all agree)."""
    ranges: dict[str, RangeStats] = {}

    def observe(site: Site, module: nn.Module, x: torch.Tensor):
        if site.name not in ranges:
            ranges[site.name] = RangeStats(x.shape[site.channel_axis], site.channel_axis)
        ranges[site.name].update(x)

    count = min(len(images), config.limit or len(images), config.calibration_images)
    with capture(model, observe) as sites, torch.no_grad():
        for x in batches(images, count, config.batch_size, progress, "calibrate"):
            model(x)
    quantizers = {}
    for site in sites:
        lo, hi = ranges[site.name].bounds(config.calibration, config.percentile, config.per_channel)
        axis = site.channel_axis if config.per_channel else None
        quantizers[site.name] = {b: params_for_range(b, lo, hi, axis) for b in config.bits}
    return list(sites), quantizers


def measure(model: nn.Module, images: Dataset, config: AnalyzeConfig = AnalyzeConfig(),
            progress: Progress | None = None) -> Measurement:
    """Calibrate, then stream every image through the model and measure each site. Under torchrun
    the batches are shared out between the ranks and the statistics all-reduced, so every rank
    returns what a single process would. `images`: (image, label) pairs, or a tensor batch."""
    images = as_images(images)
    if len(images) == 0:
        raise ActzipError("no images to analyze")
    model.eval()
    sites, quantizers = calibrate(model, images, config, progress)
    coders = {name: {b: codecs.get(name, bits=b) for b in config.bits} for name in config.codecs}
    stats = {s.name: SiteStats(quantizers[s.name], s.channel_axis, coders) for s in sites}

    def observe(site: Site, module: nn.Module, x: torch.Tensor):
        stats[site.name].update(module, x)

    count = min(len(images), config.limit or len(images))
    with capture(model, observe), torch.no_grad():
        for x in batches(images, count, config.batch_size, progress, "measure", rank_and_world()):
            model(x)
    if rank_and_world()[1] > 1:
        for s in stats.values():
            s.load_state_vector(all_reduce_sum(s.state_vector()))
    return Measurement(sites, quantizers, stats, count)


def build_report(m: Measurement, model_name: str, image_source: str, preprocess: dict | None,
                 config: AnalyzeConfig) -> dict:
    """The report.json document (bit widths as string keys)."""
    bits = [str(b) for b in config.bits]
    names = [*config.codecs, *HISTOGRAM_BOUNDS]
    sites, totals_coded = [], {c: {b: 0.0 for b in bits} for c in names}
    for site in m.sites:
        s = m.stats[site.name]
        coded = {c: {str(b): v for b, v in per_bits.items()} for c, per_bits in s.stream_bits.items()}
        coded.update({c: {str(b): fn(s.codes[b]) for b in config.bits} for c, fn in HISTOGRAM_BOUNDS.items()})
        for c in coded:
            for b in bits:
                totals_coded[c][b] += coded[c][b]
        sites.append({
            "name": site.name, "module": site.module_name, "type": site.module_type, "shape": list(site.shape),
            "numel": s.numel, "zero_fraction": s.zero_fraction,
            "macs": s.macs.macs, "effective_macs": s.macs.effective_macs,
            "quantizer": {str(b): m.quantizers[site.name][b].to_dict() for b in config.bits},
            "quantized_zero_fraction": {str(b): int(h.counts[h.zero_index]) / max(h.numel, 1)
                                        for b, h in s.codes.items()},
            "bits": coded,
        })
    numel = sum(s["numel"] for s in sites)
    macs = sum(s["macs"] for s in sites)
    effective = sum(s["effective_macs"] for s in sites)
    zeros = sum(s["zero_fraction"] * s["numel"] for s in sites)
    return {
        "actzip_version": __version__,
        "model": model_name,
        "images": m.images,
        "image_source": image_source,
        "preprocess": preprocess,
        "bits": [int(b) for b in bits],
        "codecs": {"streams": list(config.codecs), "bounds": list(HISTOGRAM_BOUNDS),
                   "note": "stream bits are real stream lengths, one stream per site and batch, headers included"},
        "calibration": {"method": config.calibration, "percentile": config.percentile,
                        "per_channel": config.per_channel,
                        "images": min(m.images, config.calibration_images)},
        "sites": sites,
        "totals": {
            "numel": numel,
            "zero_fraction": zeros / numel if numel else 0.0,
            "macs": macs,
            "effective_macs": effective,
            "theoretical_speedup": macs / effective if effective else math.inf,
            "compression": {c: {b: (numel * int(b) / v if v else math.inf) for b, v in per_bits.items()}
                            for c, per_bits in totals_coded.items()},
        },
    }


def analyze(model: nn.Module, images: Dataset, config: AnalyzeConfig = AnalyzeConfig(), *,
            model_name: str | None = None, preprocess: dict | None = None,
            progress: Progress | None = None) -> dict:
    """Measure `model` over `images` and return the report dict (see build_report). `images`:
    a dataset of (image, label) pairs (labels are not used here), or a tensor batch (N, C, H, W) of
    images already preprocessed for the model."""
    images = as_images(images)
    m = measure(model, images, config, progress)
    return build_report(m, model_name or type(model).__name__, getattr(images, "name", type(images).__name__),
                        preprocess, config)

"""Accuracy with compressed activations in the loop.

Every site's input is replaced by what a decoder would hand the layer: the activation map is
quantized (quantizers calibrated as in `analyze`), encoded into a real stream, decoded, and
dequantized. Three forwards per batch give the float model's prediction, the quantization-only
prediction and the compressed one; the report has top-1 of each (on labelled images), top-1
agreement of the quantized and the compressed model with the float one, and per-site and total
compression taken from the stream lengths. A lossless codec therefore reproduces the
quantization-only result exactly.

The settings of a lossy codec come from `actzip.lossy.planner`.

Calibration uses the first `calibration_images` of the evaluated images, or of a separate set
(`evaluate(..., calibration=...)`, e.g. training images) so that what is reported was not
calibrated on.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from .. import codecs
from ..analysis import Progress
from ..codecs.layout import squared_error
from ..errors import ActzipError
from ..quant import dequantize
from ..sites import Site, capture
from .agreement import chance_from_margins, margin_kappa, margin_noise
from .config import EvaluateConfig
from .planner import Allocation, calibrated_quantizers, quantized_codes, site_codecs


class _SiteCoding:
    """The capture hook of `evaluate`: each site's maps quantized and, while `compress` is set,
    coded and decoded, with the bytes, values and squared errors counted per site."""

    def __init__(self, sites: list[Site], quantizers: dict, coders: dict[str, codecs.Codec]):
        self.quantizers, self.coders, self.compress = quantizers, coders, True
        self.bytes = {s.name: 0 for s in sites}
        self.numel = {s.name: 0 for s in sites}
        self.errors = {s.name: [0.0, 0.0] for s in sites}  # squared error, energy (in codes)

    def __call__(self, site: Site, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        q = self.quantizers[site.name]
        codes = quantized_codes(x, q)
        if self.compress:
            stream = self.coders[site.name].encode(codes)
            decoded = self.coders[site.name].decode(stream).reshape(codes.shape)
            self.bytes[site.name] += len(stream)
            self.numel[site.name] += codes.size
            err, energy = squared_error(codes.reshape(-1), decoded.reshape(-1))
            self.errors[site.name][0] += err
            self.errors[site.name][1] += energy
            codes = decoded
        return dequantize(torch.from_numpy(codes.astype(np.int32)), q).to(x.dtype)

    def per_site(self, sites: list[Site], bits: int, allocated: dict[str, Allocation]) -> list[dict]:
        return [{"name": s.name, "shape": list(s.shape), "codec": self.coders[s.name].describe(),
                 "numel": self.numel[s.name], "bytes": self.bytes[s.name],
                 "compression": self.numel[s.name] * bits / (8 * self.bytes[s.name]),
                 "relative_error": self.errors[s.name][0] / self.errors[s.name][1] if self.errors[s.name][1] else 0.0}
                | (allocated[s.name].report() if s.name in allocated else {}) for s in sites]


class _Tally:
    """What `evaluate` counts over the batches: top-1 against labels (-1: none), agreement with
    the float model, output error, and the margins for the expected agreement."""

    def __init__(self):
        self.labelled = self.total = 0
        self.correct = {"float": 0, "quantized": 0, "compressed": 0}
        self.agree = {"quantized": 0, "compressed": 0}
        self.output_error = {"quantized": 0.0, "compressed": 0.0}
        self.margins = {"quantized": [], "compressed": []}
        self.output_energy = 0.0

    def add(self, y: torch.Tensor, outputs: dict[str, torch.Tensor]) -> None:
        ref = outputs["float"]
        self.output_energy += float(ref.double().square().sum())
        logits = ref.reshape(len(y), -1).numpy()
        has_label = y >= 0
        self.labelled += int(has_label.sum())
        self.total += len(y)
        for kind, out in outputs.items():
            self.correct[kind] += int((out.argmax(1) == y)[has_label].sum())
            if kind != "float":
                self.output_error[kind] += float((out - ref).double().square().sum())
                self.margins[kind].append(margin_noise(logits, out.reshape(len(y), -1).numpy()))
                self.agree[kind] += int((out.argmax(1) == ref.argmax(1)).sum())

    def summary(self) -> dict:
        total, margins = self.total, {k: np.concatenate(v, axis=1) if v else np.zeros((3, 0))
                                      for k, v in self.margins.items()}
        return {
            "images": total, "labelled": self.labelled,
            "top1": {k: v / self.labelled if self.labelled else None for k, v in self.correct.items()},
            "agreement": {k: v / total for k, v in self.agree.items()} if total else None,
            "expected_agreement": {k: float(chance_from_margins(v).mean()) for k, v in margins.items()} if total else None,
            "margin_kappa": {k: margin_kappa(v) for k, v in margins.items()} if total else None,
            "output_error": {k: v / self.output_energy if self.output_energy else 0.0
                             for k, v in self.output_error.items()},
        }


def evaluate(model: nn.Module, images: Dataset, config: EvaluateConfig = EvaluateConfig(),
             progress: Progress | None = None, calibration: Dataset | None = None,
             coders: dict[str, codecs.Codec] | None = None) -> dict:
    """Top-1 (float, quantized, compressed), agreement, and compression per site and in total;
    quantizers and codec settings calibrated on `calibration` (default: the evaluated images), or
    the codecs given (e.g. by `planner`, on the same calibration images)."""
    if len(images) == 0:
        raise ActzipError("no images to evaluate")
    count = min(len(images), config.limit or len(images))
    if calibration is None:
        calibration = torch.utils.data.Subset(images, range(count))
    elif len(calibration) == 0:
        raise ActzipError("no calibration images")
    model.eval()
    sites, quantizers = calibrated_quantizers(model, calibration, config, progress)
    allocated, search = {}, None
    if coders is None:
        coders, allocated, search = site_codecs(model, calibration, config, sites, quantizers, progress)
    elif set(coders) != {s.name for s in sites}:
        raise ActzipError("the codecs given are not one per site of this model")
    coding, tally = _SiteCoding(sites, quantizers, coders), _Tally()
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(images, range(count)), batch_size=config.batch_size)
    with torch.no_grad():
        for x, y in loader:
            outputs = {"float": model(x)}
            with capture(model, coding):
                coding.compress = False
                outputs["quantized"] = model(x)
                coding.compress = True
                outputs["compressed"] = model(x)
            tally.add(y, outputs)
            if progress:
                progress("evaluate", tally.total, count)
    all_values, all_bytes = sum(coding.numel.values()), sum(coding.bytes.values())
    return {
        "codec": config.codec, "codec_params": dict(config.codec_params), "output_budget": config.output_budget,
        "budget_by_sensitivity": config.budget_by_sensitivity, "channel_weights": config.channel_weights,
        "transform": config.transform, "agreement_target": config.agreement, "agreement_search": search.report() if search else {},
        "bits": config.bits, **tally.summary(),
        "compression": all_values * config.bits / (8 * all_bytes) if all_bytes else math.inf,
        # held by the decoder once, not sent with the maps: not in the compression above
        "side_bytes": sum(c.side_bytes for c in coders.values()),
        "sites": coding.per_site(sites, config.bits, allocated),
    }

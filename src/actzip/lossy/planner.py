"""The lossy settings of every site, chosen before `actzip.lossy.evaluate` runs.

A lossy codec with an error budget (dctcm) is calibrated first: its settings are chosen per site
from the activation maps of the calibration images, then fixed for the whole run. The budget is
the same relative error at every site (`codec_params["budget"]`); or one relative error of the
model's output (`output_budget`), split among the sites by their measured sensitivity
(`actzip.lossy.budgets`); or, with `budget_by_sensitivity`, the per-site budget e turned into the output
error it would cause at every site, e * sum of the sensitivities, and that split by sensitivity:
the same estimated damage to the output, spent where it saves the most bits; or a top-1 agreement
with the float model to keep on the calibration images (`agreement`), for which the output budget
is searched. The report gives the output's relative squared error in every case, and next to
each measured agreement the agreement expected from every image's logit margin and the noise its
outputs show (`agreement_chance`): on a hundred images one near-tie decides a percent, and the
expectation does not hinge on whether its noise happened to fall one way or the other. The
search can count flips (`agreement_estimate="count"`) or use the expectation ("margin"). With any of
the last three, `channel_weights` gives every channel of a site its own pixel-domain step, the
error spread over the channels by how strongly each reaches the output (`actzip.lossy.importance`);
and with `transform` as well, a conv site may instead take a channel transform fitted to its
calibration maps (`actzip.codecs.klt`, one step), where that costs it fewer bits at the same
multiplier.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from .. import codecs
from ..analysis import AnalyzeConfig, Progress, batches, calibrate
from ..codecs import pca
from ..codecs.layout import as_3d, sample_pixels, squared_error
from ..codecs.search import channel_curves, choose, klt_curve, pixel_curve
from ..codecs.transform import step_grid
from ..errors import ActzipError
from ..quant import QuantParams, code_dtype, dequantize, quantize
from ..sites import Site, capture
from . import budgets, importance
from .agreement import agreement_chance
from .config import EvaluateConfig

SAMPLE_VALUES = 1 << 20  # activation values per site kept for choosing a lossy codec's settings


def quantized_codes(x: torch.Tensor, q: QuantParams) -> np.ndarray:
    return quantize(x, q).numpy().astype(code_dtype(q.bits, q.signed))


def site_codecs(model: nn.Module, calibration_set: Dataset, config: EvaluateConfig, sites: list[Site],
                quantizers: dict[str, QuantParams], progress: Progress | None = None,
                ) -> tuple[dict[str, codecs.Codec], dict[str, Allocation], AgreementSearch | None]:
    """One codec per site: the configured one, or for dctcm with a budget the settings `choose`
    finds on a sample of that site's activations over the first config.calibration_images of
    `calibration_set`; per site its Allocation of an output budget (none without one); and how an
    agreement target was met (None without one)."""
    params = dict(config.codec_params)
    budget = params.pop("budget", None)

    def make(site: Site, chosen: dict | None = None) -> codecs.Codec:
        if config.codec != "dctcm":
            return codecs.get(config.codec, bits=config.bits, **params)
        return codecs.get("dctcm", bits=config.bits, axis=site.batched_channel_axis, **{**params, **(chosen or {})})

    if budget is None and config.output_budget is None and config.agreement is None:
        return {s.name: make(s) for s in sites}, {}, None
    calibration, sample = _calibration_sample(model, calibration_set, config, sites, quantizers, progress)
    allocated, search = {}, None
    if budget is None or config.budget_by_sensitivity:
        allocated, search = _allocate(model, calibration, config, sites, quantizers, sample, progress)
    if config.channel_weights:
        coder = params.get("coder", "ctxrans")
        return ({s.name: allocated[s.name].plan.codec(config.bits, s.batched_channel_axis, coder) for s in sites},
                allocated, search)
    options = {k: params[k] for k in ("group", "coder", "transform") if k in params}
    chosen = {s.name: choose(sample[s.name], config.bits, allocated[s.name].budget if allocated else budget, **options)
              for s in sites}
    if search is not None and any(c["transform"] for c in chosen.values()):
        # The search measured the agreement of pixel-domain re-quantization; a DCT setting of the
        # same error may flip other images. Keep it only if the target still holds.
        coders = {s.name: make(s, chosen[s.name]) for s in sites}
        reached = _agreement(model, calibration, quantizers, coders, search.reference, config.agreement_estimate)
        if reached < config.agreement:
            chosen = {name: {"transform": False, "step": allocated[name].allocated_step} if c["transform"] else c
                      for name, c in chosen.items()}
        search.dct_kept = reached >= config.agreement
    return {s.name: make(s, chosen[s.name]) for s in sites}, allocated, search


def _calibration_sample(model: nn.Module, calibration_set: Dataset, config: EvaluateConfig, sites: list[Site],
                        quantizers: dict[str, QuantParams], progress: Progress | None,
                        ) -> tuple[list[torch.Tensor], dict[str, np.ndarray]]:
    """The calibration batches, and per site a sample of its codes over them, (1, channels, pixels)."""
    count = min(len(calibration_set), config.calibration_images)
    calibration = [x for x in batches(calibration_set, count, config.batch_size, progress, "load calibration images")]
    samples: dict[str, list[np.ndarray]] = {s.name: [] for s in sites}
    per_batch = max(1, SAMPLE_VALUES // len(calibration))

    def keep(site: Site, module: nn.Module, x: torch.Tensor):
        codes = quantized_codes(x, quantizers[site.name])
        sample = sample_pixels(as_3d(codes.ravel(), codes.shape, site.batched_channel_axis), per_batch)
        samples[site.name].append(sample.transpose(1, 0, 2).reshape(sample.shape[1], -1))  # (channels, pixels)

    with capture(model, keep), torch.no_grad():
        for x in calibration:
            model(x)
    return calibration, {s.name: np.concatenate(samples.pop(s.name), axis=1)[None] for s in sites}


def _outputs(model: nn.Module, calibration: list[torch.Tensor], quantizers: dict[str, QuantParams],
             coders: dict[str, codecs.LossyCodec]) -> tuple[np.ndarray, float]:
    """The model's outputs over the calibration batches with every site quantized and the sites in
    `coders` replaced by their codec's reconstruction, and the relative squared error at those sites."""
    error = [0.0, 0.0]

    def replace(site: Site, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        q = quantizers[site.name]
        codes = quantized_codes(x, q)
        if site.name in coders:
            coded = coders[site.name].reconstruct(codes)
            err, energy = squared_error(codes.reshape(-1), coded)
            error[0] += err
            error[1] += energy
            codes = coded.reshape(codes.shape)
        return dequantize(torch.from_numpy(codes.astype(np.int32)), q).to(x.dtype)

    with capture(model, replace), torch.no_grad():
        out = np.concatenate([model(x).reshape(len(x), -1).numpy() for x in calibration])
    return out, error[0] / error[1] if error[1] else 0.0


def _agreement(model: nn.Module, calibration: list[torch.Tensor], quantizers: dict[str, QuantParams],
               coders: dict[str, codecs.Codec], reference: np.ndarray, estimate: str = "count") -> float:
    """Top-1 agreement of _outputs with the reference logits: counted, or expected from the margins."""
    outputs = _outputs(model, calibration, quantizers, coders)[0]
    if estimate == "margin":
        return float(agreement_chance(reference, outputs).mean())
    return float(np.mean(outputs.argmax(1) == reference.argmax(1)))


def _reference(model: nn.Module, calibration: list[torch.Tensor]) -> np.ndarray:
    """The float model's logits over the calibration batches."""
    with torch.no_grad():
        return np.concatenate([model(x).reshape(len(x), -1).numpy() for x in calibration])


@dataclass
class AgreementSearch:
    """How the output budget of an agreement target was found on the calibration images."""

    output_budget: float  # the output budget found
    calibration_agreement: float  # the agreement it kept there, counted or expected (`estimate`)
    estimate: str  # "count" or "margin"
    calibration_images: int
    reference: np.ndarray = field(repr=False)  # the float model's logits on them
    dct_kept: bool | None = None  # dctcm: whether DCT settings of the same errors still kept the target

    def report(self) -> dict:
        """What the evaluation report says of it (no logits)."""
        out = {"output_budget": self.output_budget, "calibration_agreement": self.calibration_agreement,
               "estimate": self.estimate, "calibration_images": self.calibration_images}
        return out if self.dct_kept is None else out | {"dct_kept": self.dct_kept}


def _search(model: nn.Module, calibration: list[torch.Tensor], quantizers: dict[str, QuantParams], bits: int,
            plan_for: Callable, target: float, estimate: str,
            progress: Progress | None) -> tuple[dict, AgreementSearch]:
    """The plans of the output budget that keeps `target` agreement on the calibration images
    (see budgets.budget_for_agreement), and how it was found."""
    reference = _reference(model, calibration)

    def agreement(plans: dict[str, SitePlan | TransformPlan]) -> float:
        return _agreement(model, calibration, quantizers, _requantizers(bits, plans), reference, estimate)

    output_budget, plans, reached = budgets.budget_for_agreement(plan_for, target, agreement, progress)
    return plans, AgreementSearch(output_budget, reached, estimate, len(reference), reference)


@dataclass(frozen=True)
class SitePlan:
    """How one site is re-quantized in the pixel domain: one step, or one per channel."""

    steps: np.ndarray  # (1,) or (channels,)
    error: float  # the relative squared error it is expected to cause at the site

    @property
    def lossy(self) -> bool:
        return bool((self.steps != 1.0).any())

    @property
    def settings(self) -> dict:
        """requant settings."""
        if (self.steps == self.steps[0]).all():
            return {"step": float(self.steps[0])}
        return {"channel_steps": self.steps.tolist()}

    def codec(self, bits: int, axis: int = 1, coder: str = "zvc") -> codecs.Codec:
        return codecs.get("requant", bits=bits, axis=axis, coder=coder, budget=None, **self.settings)


@dataclass(frozen=True)
class TransformPlan:
    """A site coded by its fitted channel transform (`actzip.codecs.klt`) at one step."""

    fitted: dict  # basis and mean
    point: dict  # the klt_curve point taken: step, offsets, error
    lossy = True

    @property
    def error(self) -> float:
        return self.point["error"]

    def codec(self, bits: int, axis: int = 1, coder: str = "ctxrans") -> codecs.Codec:
        return codecs.get("klt", bits=bits, axis=axis, coder=coder,
                          step=self.point["step"], offsets=self.point["offsets"], **self.fitted)


def _requantizers(bits: int, plans: dict[str, SitePlan | TransformPlan]) -> dict[str, codecs.Codec]:
    return {name: plan.codec(bits) for name, plan in plans.items() if plan.lossy}


def _transform_options(model: nn.Module, calibration: list[torch.Tensor], sites: list[Site],
                       quantizers: dict[str, QuantParams], sample: dict[str, np.ndarray], bits: int,
                       progress: Progress | None) -> dict[str, dict]:
    """Per conv site of 2..pca.MAX_CHANNELS channels: its fitted channel transform ("fitted"),
    the transform's rate-distortion points at every step ("curve", `search.klt_curve`) and its own
    sensitivity, measured like the pixel probe's: the transform's error lands on every channel
    and on the ReLU's zeros, so it reaches the output differently."""
    options = {}
    for i, site in enumerate(sites):
        if len(site.shape) == 3 and 2 <= site.shape[0] <= pca.MAX_CHANNELS:
            fitted = pca.fit(sample[site.name])
            options[site.name] = {"fitted": fitted, "curve": klt_curve(sample[site.name], bits, **fitted,
                                                                        steps=step_grid(bits))}
        if progress:
            progress("fit channel transforms", i + 1, len(sites))
    names = list(options)
    probes = [budgets.probe_point(options[n]["curve"]) for n in names]

    def run(target: str | None, step: float | None) -> tuple[np.ndarray, float]:
        plans = {}
        if target is not None:
            point = next(p for p in options[target]["curve"] if p["step"] == step)
            plans[target] = TransformPlan(options[target]["fitted"], point)
        return _outputs(model, calibration, quantizers, _requantizers(bits, plans))

    for name, sensitivity in zip(names, budgets.sensitivities(names, probes, run, progress)):
        options[name]["sensitivity"] = sensitivity
    return options


def _channel_planner(model: nn.Module, calibration: list[torch.Tensor], sites: list[Site],
                     sample: dict[str, np.ndarray], site_curves: list[list[dict]], sensitivity: list[float],
                     bits: int, transforms: dict[str, dict]):
    """plan_for(output budget) -> a plan per site with one step per channel: the channels of all
    conv inputs are the units of one allocation (see actzip.lossy.budgets). A Linear input stays one
    unit with one step: its "channels" are features seen once per image, too few values each to
    measure a rate from, and a step byte per feature would cost more than it saves. A site in
    `transforms` (see _transform_options) may instead take its channel transform, one unit with
    one step; the allocation picks whichever of the two costs the site less."""
    weights = importance.channel_weights(model, calibration, sites)
    units, site_of_option, is_transform = [], [], []  # per option: (rate, error, values, sensitivity) over its units
    for i, (site, site_curve, sens) in enumerate(zip(sites, site_curves, sensitivity)):
        values = math.prod(site.shape)
        site_of_option.append(i)
        is_transform.append(False)
        if len(site.shape) != 3:
            units.append((np.array([[p["bits_per_value"] for p in site_curve]]),
                          np.array([[p["error"] for p in site_curve]]), np.array([values]), np.array([sens])))
            continue
        curve = channel_curves(sample[site.name], bits)
        channels = len(curve["energy"])
        energy = curve["energy"].sum()
        units.append((curve["bits_per_value"], curve["error"] / energy if energy else np.zeros_like(curve["error"]),
                      np.full(channels, values / channels), sens * weights[site.name]))
        if site.name in transforms:
            option = transforms[site.name]
            site_of_option.append(i)
            is_transform.append(True)
            units.append((np.array([[p["bits_per_value"] for p in option["curve"]]]),
                          np.array([[p["error"] for p in option["curve"]]]), np.array([values]),
                          np.array([option["sensitivity"]])))
    rate, error, values, unit_sensitivity = (np.concatenate(part) for part in zip(*units))
    option_of_unit = np.repeat(np.arange(len(units)), [len(u[2]) for u in units])
    bounds = np.cumsum([0] + [len(u[2]) for u in units])
    site_of_option = np.array(site_of_option)
    steps = np.array([p["step"] for p in site_curves[0]])

    def plan_for(output_budget: float) -> dict[str, SitePlan | TransformPlan]:
        chosen, taken = budgets.choose_options(rate, error, values, unit_sensitivity, output_budget,
                                               option_of_unit, site_of_option)
        plans = {}
        for option, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            if not taken[a]:
                continue
            name = sites[site_of_option[option]].name
            if is_transform[option]:
                plans[name] = TransformPlan(transforms[name]["fitted"], transforms[name]["curve"][chosen[a]])
            else:
                plans[name] = SitePlan(steps[chosen[a:b]], float(error[np.arange(a, b), chosen[a:b]].sum()))
        return plans

    return plan_for


def _planner(model: nn.Module, calibration: list[torch.Tensor], config: EvaluateConfig, sites: list[Site],
             quantizers: dict[str, QuantParams], sample: dict[str, np.ndarray], progress: Progress | None):
    """(plan_for(output budget) -> a plan per site, the sites' sensitivities, the transform options):
    what an allocation measures on the calibration images, once for any number of budgets."""
    coder = config.codec_params.get("coder", "zvc")
    curves = [pixel_curve(sample[s.name], config.bits, coder) for s in sites]
    probes = [budgets.probe_point(c) for c in curves]
    names = [s.name for s in sites]

    def run(target: str | None, step: float | None) -> tuple[np.ndarray, float]:
        plans = {} if target is None else {target: SitePlan(np.array([step]), 0.0)}
        return _outputs(model, calibration, quantizers, _requantizers(config.bits, plans))

    sensitivity = budgets.sensitivities(names, probes, run, progress)
    values = [math.prod(s.shape) for s in sites]
    transforms = {}
    if config.channel_weights:
        if config.transform:
            transforms = _transform_options(model, calibration, sites, quantizers, sample, config.bits, progress)
        plan_for = _channel_planner(model, calibration, sites, sample, curves, sensitivity, config.bits, transforms)
    else:
        def plan_for(output_budget: float) -> dict[str, SitePlan]:
            points = budgets.allocate(curves, values, sensitivity, output_budget)
            return {s.name: SitePlan(np.array([p["step"]]), p["error"]) for s, p in zip(sites, points)}
    return plan_for, sensitivity, transforms


@dataclass(frozen=True)
class Allocation:
    """One site's share of an output budget or agreement target."""

    budget: float  # its relative squared error, in (0, 1): what `choose` is given
    sensitivity: float  # the output error a unit of error at the site causes
    allocated_step: float | None = None  # one step per site: the step of the curve point taken
    plan: SitePlan | TransformPlan | None = None  # channel weights: its steps, or its transform
    transform_sensitivity: float | None = None  # where a transform was on offer: its sensitivity

    def report(self) -> dict:
        """What the evaluation report says of the site (the plan shows in its codec)."""
        out = {"budget": self.budget, "sensitivity": self.sensitivity}
        for key in ("allocated_step", "transform_sensitivity"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


def _allocate(model: nn.Module, calibration: list[torch.Tensor], config: EvaluateConfig, sites: list[Site],
              quantizers: dict[str, QuantParams], sample: dict[str, np.ndarray],
              progress: Progress | None) -> tuple[dict[str, Allocation], AgreementSearch | None]:
    """Per site its Allocation of config.output_budget (of the per-site budget's output error with
    budget_by_sensitivity, or of the output budget searched for config.agreement; see
    actzip.lossy.budgets), and for an agreement target how it was found."""
    plan_for, sensitivity, transforms = _planner(model, calibration, config, sites, quantizers, sample, progress)
    search = None
    if config.agreement is not None:
        plans, search = _search(model, calibration, quantizers, config.bits, plan_for, config.agreement,
                                config.agreement_estimate, progress)
    else:
        output_budget = config.output_budget
        if output_budget is None:  # budget_by_sensitivity: what the per-site budget everywhere would cost
            output_budget = min(max(config.codec_params["budget"] * sum(sensitivity), 1e-12), 1 - 1e-9)
        plans = plan_for(output_budget)
    allocated = {}
    for s, sens in zip(sites, sensitivity):
        plan = plans[s.name]
        budget = min(max(plan.error, 1e-12), 1 - 1e-9)  # choose needs (0, 1): an exact point becomes a tiny budget
        if config.channel_weights:
            transform = transforms.get(s.name, {}).get("sensitivity") if config.transform else None
            allocated[s.name] = Allocation(budget, sens, plan=plan, transform_sensitivity=transform)
        else:
            allocated[s.name] = Allocation(budget, sens, allocated_step=float(plan.steps[0]))
    return allocated, search


class Planner:
    """The codecs per site for any output budget (`planner(budget)`) or agreement target
    (`for_agreement`), from one calibration: what `evaluate` with that budget or target (and
    otherwise `config`, which needs channel weights) would use. The sensitivities, channel
    weights and transforms are measured once, for a sweep. Pass the codecs to
    `evaluate(..., calibration=calibration, coders=...)` with the same config."""

    def __init__(self, model: nn.Module, calibration: Dataset, config: EvaluateConfig,
                 progress: Progress | None = None):
        if not config.channel_weights:
            raise ValueError("a planner hands out channel-weighted plans: the config needs channel weights")
        if len(calibration) == 0:
            raise ActzipError("no calibration images")
        model.eval()
        self.model, self.config = model, config
        self.sites, self.quantizers = calibrated_quantizers(model, calibration, config, progress)
        self.batches, sample = _calibration_sample(model, calibration, config, self.sites, self.quantizers, progress)
        self.plan_for = _planner(model, self.batches, config, self.sites, self.quantizers, sample, progress)[0]

    def _codecs(self, plans: dict[str, SitePlan | TransformPlan]) -> dict[str, codecs.Codec]:
        coder = self.config.codec_params.get("coder", "zvc")
        return {s.name: plans[s.name].codec(self.config.bits, s.batched_channel_axis, coder) for s in self.sites}

    def __call__(self, output_budget: float) -> dict[str, codecs.Codec]:
        return self._codecs(self.plan_for(output_budget))

    def for_agreement(self, target: float, estimate: str = "count",
                      progress: Progress | None = None) -> tuple[float, dict[str, codecs.Codec], float]:
        """(the output budget found for `target` on the calibration images, its codecs, the
        agreement it reached there, counted or expected: `estimate`)."""
        dataclasses.replace(self.config, output_budget=None, agreement=target, agreement_estimate=estimate)  # checks them
        plans, found = _search(self.model, self.batches, self.quantizers, self.config.bits, self.plan_for, target,
                               estimate, progress)
        return found.output_budget, self._codecs(plans), found.calibration_agreement


def planner(model: nn.Module, calibration: Dataset, config: EvaluateConfig,
            progress: Progress | None = None) -> Planner:
    """A `Planner` calibrated on `calibration`."""
    return Planner(model, calibration, config, progress)


def calibrated_quantizers(model: nn.Module, calibration: Dataset, config: EvaluateConfig,
                progress: Progress | None) -> tuple[list[Site], dict[str, QuantParams]]:
    analyze_config = AnalyzeConfig(bits=(config.bits,), batch_size=config.batch_size,
                                   calibration_images=config.calibration_images, codecs=())
    sites, quantizers = calibrate(model, calibration, analyze_config, progress)
    return sites, {name: q[config.bits] for name, q in quantizers.items()}

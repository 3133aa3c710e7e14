"""What `actzip.lossy.evaluate` compresses in the loop, and how its lossy settings are chosen: one
config, checked whole when it is made."""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import codecs
from ..analysis import AnalyzeConfig
from .options import AGREEMENT_ESTIMATES, AgreementTarget, Budget, OutputBudget, SiteBudget


@dataclass(frozen=True)
class EvaluateConfig:
    """What `evaluate` compresses in the loop, and how its lossy settings are chosen.

    Args:
        codec: the codec of every site (see actzip.codecs.names(lossy=True)).
        bits: the quantizer bit width, 2..16.
        codec_params: the codec's settings, e.g. {"budget": 0.01, "group": 8, "coder": "rans"}.
        batch_size: images per forward pass.
        limit: evaluate at most this many images (None: all).
        calibration_images: quantizers and codec settings are calibrated on the first N images.
        output_budget: dctcm: a relative squared error of the model's output, split among the
            sites by their measured sensitivity.
        budget_by_sensitivity: dctcm with codec_params["budget"]: spend the output error that
            budget at every site would cause where it saves the most bits.
        agreement: dctcm: the top-1 agreement with the float model to keep on the calibration
            images; the output budget is searched to meet it.
        channel_weights: one step per channel, by its measured influence on the output.
        transform: with channel weights, a conv site may take a channel transform fitted to it (klt).
        agreement_estimate: how the agreement search measures agreement: "count" the flips, or
            "margin" (the agreement expected from each image's logit margin and output noise).
        budget: the error to spend, typed (actzip.lossy): SiteBudget, OutputBudget or
            AgreementTarget. It sets the fields above that it stands for (codec_params["budget"],
            budget_by_sensitivity, output_budget, agreement, agreement_estimate).
        granularity: "site" (one step per site) or "channel" (one per channel: channel_weights).
        allow_klt: a conv site may take a channel transform fitted to it (transform).
    """

    codec: str = "zvc"
    bits: int = 8
    codec_params: dict = field(default_factory=dict)  # e.g. {"budget": 0.01, "group": 8, "coder": "rans"}
    batch_size: int = 16
    limit: int | None = None
    calibration_images: int = 64
    output_budget: float | None = None  # relative squared error of the output, split among the sites
    budget_by_sensitivity: bool = False  # spend the output error of codec_params["budget"] by sensitivity
    agreement: float | None = None  # top-1 agreement to keep on the calibration images; finds the output budget
    channel_weights: bool = False  # one step per channel, by its measured influence on the output
    transform: bool = False  # with channel weights: a conv site may take its fitted channel transform (klt)
    agreement_estimate: str = "count"  # how the search measures agreement: "count" flips, or "margin" (agreement_chance)
    budget: Budget | None = None
    granularity: str = "site"
    allow_klt: bool = False

    def __post_init__(self):
        self._apply_typed_options()
        AnalyzeConfig(bits=(self.bits,), batch_size=self.batch_size, limit=self.limit,
                      calibration_images=self.calibration_images, codecs=())  # the shared checks
        codecs.get(self.codec, bits=self.bits, **self.codec_params)  # unknown codec or bad settings fail here
        if self.output_budget is not None:
            if self.codec != "dctcm" or "budget" in self.codec_params:
                raise ValueError("an output budget needs the dctcm codec without a per-site budget")
            if not 0 < self.output_budget < 1:
                raise ValueError(f"output error budget must be in (0, 1), got {self.output_budget}")
        if self.agreement is not None:
            if self.codec != "dctcm" or "budget" in self.codec_params or self.output_budget is not None:
                raise ValueError("an agreement target needs the dctcm codec without another budget")
            if not 0 < self.agreement < 1:
                raise ValueError(f"agreement target must be in (0, 1), got {self.agreement}")
        if self.agreement_estimate not in AGREEMENT_ESTIMATES:
            raise ValueError(f"agreement estimate must be one of {', '.join(AGREEMENT_ESTIMATES)}, "
                             f"got {self.agreement_estimate!r}")
        if self.budget_by_sensitivity and (self.codec != "dctcm" or "budget" not in self.codec_params):
            raise ValueError("spreading a budget by sensitivity needs the dctcm codec with a per-site budget")
        if self.channel_weights:
            if self.output_budget is None and self.agreement is None and not self.budget_by_sensitivity:
                raise ValueError("channel weights need an output budget, an agreement target or a budget "
                                 "spread by sensitivity")
            if self.codec_params.get("transform", False):
                raise ValueError("channel weights give per-channel steps in the pixel domain: transform must be off")
            if self.codec_params.get("coder", "ctxrans") == "zvc":
                raise ValueError("channel weights need an entropy coder (coder=rans or ctxrans): zvc packs every "
                                 "non-zero at the width of the largest, whatever its channel's step")
        if self.transform and not self.channel_weights:
            raise ValueError("a learned channel transform is a choice of the channel planner: it needs channel weights")

    def _apply_typed_options(self) -> None:
        """budget, granularity and allow_klt as the fields the evaluation reads (a field given too
        must agree: dataclasses.replace passes both)."""
        if self.granularity not in ("site", "channel"):
            raise ValueError(f"granularity is 'site' or 'channel', got {self.granularity!r}")
        changes: dict = {}
        if isinstance(self.budget, SiteBudget):
            changes = {"budget_by_sensitivity": self.budget.by_sensitivity}
            if self.codec_params.get("budget", self.budget.error) != self.budget.error:
                raise ValueError("give the error budget once: budget= or codec_params['budget'], not both")
            object.__setattr__(self, "codec_params", {**self.codec_params, "budget": self.budget.error})
        elif isinstance(self.budget, OutputBudget):
            changes = {"output_budget": self.budget.error}
        elif isinstance(self.budget, AgreementTarget):
            changes = {"agreement": self.budget.agreement, "agreement_estimate": self.budget.estimate}
        elif self.budget is not None:
            raise ValueError(f"budget is a SiteBudget, OutputBudget or AgreementTarget, got {self.budget!r}")
        for name, value in changes.items():
            given = getattr(self, name)
            if given != value and given != EvaluateConfig.__dataclass_fields__[name].default:
                raise ValueError(f"give the error budget once: budget= or {name}=, not both")
            object.__setattr__(self, name, value)
        object.__setattr__(self, "channel_weights", self.channel_weights or self.granularity == "channel")
        object.__setattr__(self, "transform", self.transform or self.allow_klt)

"""Typed lossy targets: how much error `evaluate` may spend, each a small config that checks itself.

One of these goes into `EvaluateConfig(budget=...)`, and `--budget` on the command line parses the
same three forms: `site:1e-3`, `output:0.1`, `agreement:0.98` (with `:sensitivity` and `:margin`
for the variants below).
"""

from __future__ import annotations

from dataclasses import dataclass

AGREEMENT_ESTIMATES = ("count", "margin")


def _fraction(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"{what} must be a number in (0, 1), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class SiteBudget:
    """The same relative squared error at every site (dctcm's `budget`).

    Args:
        error: the relative squared error of each site's codes, in (0, 1).
        by_sensitivity: spend the output error that `error` at every site would cause where it
            saves the most bits, by each site's measured sensitivity.
    """

    error: float
    by_sensitivity: bool = False

    def __post_init__(self):
        _fraction(self.error, "a site's error budget")


@dataclass(frozen=True)
class OutputBudget:
    """A relative squared error of the model's output, split among the sites by their sensitivity.

    Args:
        error: the relative squared error of the output, in (0, 1).
    """

    error: float

    def __post_init__(self):
        _fraction(self.error, "an output error budget")


@dataclass(frozen=True)
class AgreementTarget:
    """A top-1 agreement with the float model to keep on the calibration images; the output budget
    is searched to meet it.

    Args:
        agreement: the fraction of images whose top-1 class stays, in (0, 1).
        estimate: how the search measures agreement: "count" the flips, or "margin": the agreement
            expected from each image's logit margin and output noise (smooth on few images).
    """

    agreement: float
    estimate: str = "count"

    def __post_init__(self):
        _fraction(self.agreement, "an agreement target")
        if self.estimate not in AGREEMENT_ESTIMATES:
            raise ValueError(f"agreement estimate must be one of {', '.join(AGREEMENT_ESTIMATES)}, "
                             f"got {self.estimate!r}")


Budget = SiteBudget | OutputBudget | AgreementTarget
_KINDS = {"site": (SiteBudget, {"sensitivity": {"by_sensitivity": True}}),
          "output": (OutputBudget, {}),
          "agreement": (AgreementTarget, {"margin": {"estimate": "margin"}, "count": {"estimate": "count"}})}


def parse_budget(text: str) -> Budget:
    """`site:1e-3[:sensitivity]`, `output:0.1` or `agreement:0.98[:margin]` as its config."""
    kind, _, rest = text.partition(":")
    value, _, variant = rest.partition(":")
    if kind not in _KINDS or not value:
        raise ValueError(f"a budget is site:E, output:E or agreement:A (e.g. output:0.1), got {text!r}")
    cls, variants = _KINDS[kind]
    if variant and variant not in variants:
        raise ValueError(f"{kind}: budgets take {' or '.join(variants) or 'no'} variant, got {variant!r}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"the {kind} budget is a number, got {value!r}") from None
    return cls(number, **variants.get(variant, {}))

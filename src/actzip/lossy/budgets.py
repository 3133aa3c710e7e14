"""Per-site error budgets from one budget on the model's output.

The same relative error costs the output very different amounts at different sites: on
EfficientNet-Lite0, error at the first block's depthwise conv reaches the logits about 400 times
more strongly than the same error in a late block (measured sensitivities 86 against 0.2), so a
uniform per-site budget spends most of its error where it hurts most. Here

- a site's *sensitivity* s_i is the relative squared error added to the model's output per unit
  of relative squared error at that site alone, measured by re-quantizing that one site on the
  calibration images (against the quantization-only output);
- its *rate-distortion curve* is pixel-domain re-quantization at every step of dctcm's grid on a
  sample of its activations (`codecs.search.pixel_curve`);
- the budgets minimise the total bits subject to sum_i s_i * e_i <= the output budget (errors of
  different sites add at the output about independently), through one Lagrange multiplier found
  by bisection; each site then searches dctcm's full settings (DCT, keep mask) within its e_i;
- or, with channel weights (`actzip.lossy.importance`: how strongly each channel of a site reaches the
  output, averaging 1 over the site), the units are channels: channel c of site i has
  sensitivity s_i * w_c and, as its error, its squared error over the whole site's energy (so
  that noise spread evenly costs what the site's probe measured), and the same multiplier picks
  one step per channel (`choose_points` works on arrays of any number of units).

The relative output error a model tolerates differs between models (a 10-class Fashion-MNIST
network flips its top-1 at a third of the output error Lite0 does), so the budget can also be
found from a target top-1 agreement with the float model on the calibration images
(`budget_for_agreement`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

Plan = TypeVar("Plan")  # what an allocation hands the agreement test: points per site, steps per channel

PROBE_ERROR = 1e-3  # the relative error injected at one site to measure its sensitivity
OUTPUT_BUDGET_RANGE = (1e-4, 0.9)  # where budget_for_agreement looks
GRID_RATIO = 10**0.25  # budget_for_agreement's first pass: from the top of the range down in these steps
REFINE_STEPS = 6  # then bisection on log10 up to the grid step above: ends within 1 % of the boundary
UNREACHABLE = 1e300  # the bits and error of a point that cannot be taken (finite, so 0 x it is 0)


def choose_points(bits: np.ndarray, errors: np.ndarray, values: np.ndarray, sensitivities: np.ndarray,
                  output_budget: float) -> np.ndarray:
    """For U units (sites, or the channels of sites) with S rate-distortion points each (bits per
    value and error, (U, S) arrays), the index of the point each takes such that
    sum(sensitivity * error) <= output_budget at the fewest total bits (values: (U,), how many
    activation values a unit's bits_per_value counts for)."""
    units = np.arange(np.shape(values)[0])
    return choose_options(bits, errors, values, sensitivities, output_budget, units, units)[0]


def choose_options(bits: np.ndarray, errors: np.ndarray, values: np.ndarray, sensitivities: np.ndarray,
                   output_budget: float, option_of_unit: np.ndarray,
                   site_of_option: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`choose_points` for sites that can be coded in more than one way (pixel re-quantization
    with a step per channel, or a channel transform with one step): every unit belongs to an
    option (option_of_unit, (U,)) and every option to a site (site_of_option, (O,)); at each
    multiplier a site takes the option of the smallest rate + multiplier x damage, summed over
    its units. Returns the point of every unit and whether its option was taken (both (U,))."""
    if not 0 < output_budget < 1:
        raise ValueError(f"output error budget must be in (0, 1), got {output_budget}")
    bits, errors = (np.where(np.isfinite(a), a, UNREACHABLE) for a in (np.asarray(bits, float), np.asarray(errors, float)))
    values, sensitivities = np.asarray(values, float), np.asarray(sensitivities, float)
    option_of_unit, site_of_option = np.asarray(option_of_unit), np.asarray(site_of_option)
    if not bits.shape == errors.shape == values.shape + bits.shape[1:] or sensitivities.shape != values.shape \
            or option_of_unit.shape != values.shape:
        raise ValueError("one curve, value count, sensitivity and option per unit")
    rate = bits * (values / max(values.sum(), 1.0))[:, None]
    damage = sensitivities[:, None] * errors
    rows = np.arange(len(values))

    def pick(log_lam: float) -> tuple[np.ndarray, np.ndarray, float]:
        cost = rate + 10.0**log_lam * damage
        chosen = np.argmin(cost, axis=1)
        option_cost = np.bincount(option_of_unit, cost[rows, chosen], minlength=len(site_of_option))
        order = np.lexsort((option_cost, site_of_option))  # by site, then cost: the first of each site wins
        taken = np.zeros(len(site_of_option), bool)
        taken[order[np.r_[True, np.diff(site_of_option[order]) != 0]]] = True
        taken = taken[option_of_unit]
        return chosen, taken, float(damage[rows, chosen][taken].sum())

    lo, hi = -12.0, 12.0  # log10 of the multiplier: 1e-12 spends no bits, 1e12 buys every error away
    *best, spent = pick(hi)
    if spent > output_budget:  # even the most precise points exceed it (the curves have no error-free point)
        return tuple(best)
    for _ in range(60):
        mid = (lo + hi) / 2
        *chosen, spent = pick(mid)
        if spent <= output_budget:
            hi, best = mid, chosen
        else:
            lo = mid
    return tuple(best)


def allocate(curves: Sequence[Sequence[dict]], values: Sequence[float], sensitivities: Sequence[float],
             output_budget: float) -> list[dict]:
    """One point of each curve (a dict with "error" and "bits_per_value") such that
    sum(sensitivity * error) <= output_budget at the fewest total bits (values: per site, how many
    activation values its bits_per_value counts for)."""
    if not len(curves) == len(values) == len(sensitivities):
        raise ValueError("one curve, value count and sensitivity per site")
    width = max((len(c) for c in curves), default=0)

    def table(key: str) -> np.ndarray:  # curves of unequal length padded with points never worth taking
        return np.array([[p[key] for p in c] + [math.inf] * (width - len(c)) for c in curves], float).reshape(-1, width)

    chosen = choose_points(table("bits_per_value"), table("error"), np.array(values, float),
                           np.array(sensitivities, float), output_budget)
    return [curve[i] for curve, i in zip(curves, chosen)]


def probe_point(curve: Sequence[dict]) -> dict | None:
    """The point whose (non-zero) error is nearest PROBE_ERROR on a log scale; None if all are exact."""
    lossy = [p for p in curve if 0 < p["error"] < math.inf]
    if not lossy:
        return None
    return min(lossy, key=lambda p: abs(math.log(p["error"] / PROBE_ERROR)))


def relative_output_error(out: np.ndarray, ref: np.ndarray) -> float:
    """sum((out - ref)^2) / sum(ref^2)."""
    energy = float(np.square(ref, dtype=np.float64).sum())
    return float(np.square(out - ref, dtype=np.float64).sum()) / energy if energy else 0.0


def sensitivities(names: Sequence[str], probes: Sequence[dict | None],
                  run: Callable[[str | None, float | None], tuple[np.ndarray, float]],
                  progress: Callable[[str, int, int], None] | None = None) -> list[float]:
    """s_i per site. run(site, step) gives the model's output over the calibration images with only
    that site re-quantized at step (run(None, None): quantization only) and the relative squared
    error it caused at the site. A site with no lossy point, or whose probe leaves it exact, gets 0."""
    reference, _ = run(None, None)
    out = []
    for i, (name, probe) in enumerate(zip(names, probes)):
        if probe is None:
            out.append(0.0)
        else:
            output, error = run(name, probe["step"])
            out.append(relative_output_error(output, reference) / error if error > 0 else 0.0)
        if progress:
            progress("site sensitivity", i + 1, len(names))
    return out


def budget_for_agreement(allocate_for: Callable[[float], Plan], target: float,
                         agreement: Callable[[Plan], float],
                         progress: Callable[[str, int, int], None] | None = None) -> tuple[float, Plan, float]:
    """The largest output budget whose plan (allocate_for(budget), e.g. the points `allocate`
    picks) keeps agreement(plan) >= target: (output budget, its plan, their agreement). On a few
    images agreement does not fall monotonically with the budget (one image flips back and forth),
    so a bisection over the whole range can stop at a low boundary; instead the budgets are tried
    from the top of OUTPUT_BUDGET_RANGE down by GRID_RATIO, and the first that keeps the target is
    refined towards the one above it. If none does, the smallest budget is returned, and its
    agreement says by how much it falls short."""
    if not 0 < target < 1:
        raise ValueError(f"agreement target must be in (0, 1), got {target}")
    low, high = OUTPUT_BUDGET_RANGE
    grid = [high / GRID_RATIO**k for k in range(math.ceil(math.log(high / low, GRID_RATIO)))] + [low]

    def attempt(budget: float) -> tuple[float, Plan, float]:
        plan = allocate_for(budget)
        return budget, plan, agreement(plan)

    for k, budget in enumerate(grid):
        best = attempt(budget)
        if progress:
            progress("search output budget", k + 1, len(grid))
        if best[2] >= target:
            break
    else:
        return best
    if k:  # refine between the budget that kept the target and the one above, which did not
        lo, hi = math.log10(best[0]), math.log10(grid[k - 1])
        for _ in range(REFINE_STEPS):
            mid = (lo + hi) / 2
            tried = attempt(10**mid)
            if tried[2] >= target:
                lo, best = mid, tried
            else:
                hi = mid
    return best

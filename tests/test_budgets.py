import math

import numpy as np
import pytest

from actzip.lossy.budgets import (OUTPUT_BUDGET_RANGE, allocate, budget_for_agreement, choose_options, probe_point,
                            sensitivities)


def _curve(scale: float = 1.0):
    """bits fall by half a bit per value per doubling of the error, like uniform quantization."""
    return [{"step": 2.0**k, "error": scale * 4.0**k * 1e-6, "bits_per_value": 8 - k} for k in range(8)]


def _spent(points, sens):
    return sum(s * p["error"] for s, p in zip(sens, points))


def test_the_more_sensitive_site_gets_the_smaller_error_within_the_budget_and_fewer_bits_than_uniform():
    curves, values, sens = [_curve(), _curve()], [1000, 1000], [100.0, 1.0]
    points = allocate(curves, values, sens, 0.05)
    assert points[0]["error"] < points[1]["error"]
    assert _spent(points, sens) <= 0.05
    bits = sum(p["bits_per_value"] * n for p, n in zip(points, values))
    # the best uniform choice: the same point for both sites, within the budget
    uniform = min(sum(p["bits_per_value"] * n for n in values) for p in curves[0] if _spent([p, p], sens) <= 0.05)
    assert bits < uniform


def test_allocation_matches_brute_force_on_small_curves():
    rng = np.random.default_rng(0)
    for _ in range(20):
        curves = [_curve(float(rng.uniform(0.5, 2))) for _ in range(3)]
        values = rng.integers(100, 10000, 3).tolist()
        sens = rng.uniform(0.01, 50, 3).tolist()
        budget = float(rng.uniform(1e-4, 0.5))
        points = allocate(curves, values, sens, budget)
        best = min(sum(p["bits_per_value"] * n for p, n in zip(combo, values))
                   for combo in ([a, b, c] for a in curves[0] for b in curves[1] for c in curves[2])
                   if _spent(combo, sens) <= budget)
        got = sum(p["bits_per_value"] * n for p, n in zip(points, values))
        assert _spent(points, sens) <= budget
        # a Lagrange multiplier reaches the lower convex hull: within one point's step of the optimum
        assert got <= best + max(values)


def test_each_site_takes_one_of_its_options_and_the_choice_matches_brute_force():
    # site 0: two channels (option 0) or one transform unit (option 1); site 1: one unit (option 2)
    option_of_unit, site_of_option = np.array([0, 0, 1, 2]), np.array([0, 0, 1])
    rng = np.random.default_rng(1)
    for _ in range(20):
        curves = [_curve(float(rng.uniform(0.2, 3))) for _ in range(4)]
        rate = np.array([[p["bits_per_value"] for p in c] for c in curves])
        error = np.array([[p["error"] for p in c] for c in curves])
        values = np.array([500.0, 500.0, 1000.0, float(rng.integers(100, 3000))])
        sens = rng.uniform(0.01, 50, 4)
        budget = float(rng.uniform(1e-4, 0.3))
        chosen, taken = choose_options(rate, error, values, sens, budget, option_of_unit, site_of_option)
        assert taken[3] and taken[0] == taken[1] != taken[2]  # one option of site 0, whole
        spent = float((sens * error[range(4), chosen])[taken].sum())
        got = float((values * rate[range(4), chosen])[taken].sum())
        assert spent <= budget
        ways = [((0, 1, 3), (a, b, d)) for a in range(8) for b in range(8) for d in range(8)]
        ways += [((2, 3), (c, d)) for c in range(8) for d in range(8)]
        best = min(sum(values[u] * rate[u, k] for u, k in zip(units, points)) for units, points in ways
                   if sum(sens[u] * error[u, k] for u, k in zip(units, points)) <= budget)
        assert got <= best + values.max()  # the lower convex hull, as above


def test_insensitive_sites_take_the_cheapest_point_and_bad_budgets_fail():
    points = allocate([_curve(), _curve()], [10, 10], [0.0, 1.0], 1e-3)
    assert points[0]["bits_per_value"] == 1
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        allocate([_curve()], [1], [1.0], 1.0)
    with pytest.raises(ValueError, match="one curve"):
        allocate([_curve()], [1, 2], [1.0], 0.1)


def test_probe_and_sensitivity_come_from_the_measured_output_change():
    curve = _curve()
    assert math.isclose(probe_point(curve)["error"], 1.024e-3)  # the point nearest 1e-3
    assert probe_point([{"step": 1.0, "error": 0.0, "bits_per_value": 8}]) is None
    reference = np.ones((4, 10))

    def run(site, step):  # site "a" adds 0.02 relative output error for 0.001 at the site, "b" 10x less
        if site is None:
            return reference, 0.0
        bump = {"a": 0.02, "b": 0.002}[site]
        return reference * (1 + math.sqrt(bump)), 1e-3

    s = sensitivities(["a", "b", "c"], [curve[4], curve[4], None], run)
    np.testing.assert_allclose(s, [20.0, 2.0, 0.0])


def test_the_agreement_search_takes_the_largest_budget_that_keeps_the_target():
    curves = [[{"step": s, "error": e, "bits_per_value": b} for s, e, b in
               ((1, 0.0, 8.0), (2, 1e-3, 6.0), (4, 1e-2, 4.0), (8, 1e-1, 2.0), (16, 0.5, 1.0))]] * 2
    sens = [1.0, 3.0]

    def per_budget(budget):
        return allocate(curves, [1, 1], sens, budget)

    def agreement(points):  # falls as the output error the points cause grows
        return 1 - _spent(points, sens)

    budget, points, reached = budget_for_agreement(per_budget, 0.97, agreement)
    assert reached >= 0.97 and _spent(points, sens) <= budget
    # a little more budget would have bought a point past the target
    looser = allocate(curves, [1, 1], sens, budget * 1.01)
    assert looser == points or agreement(looser) < 0.97
    assert budget_for_agreement(per_budget, 0.5, agreement)[0] > budget
    # one image flipping back in a middle band does not hide the larger budgets above it
    def dip(points):
        spent = _spent(points, sens)
        return 0.9 if 0.002 < spent < 0.02 else 1 - spent

    assert budget_for_agreement(per_budget, 0.95, dip)[2] >= 0.95
    assert _spent(budget_for_agreement(per_budget, 0.95, dip)[1], sens) > 0.02
    # a target no budget meets: the smallest budget, and how far it falls short
    budget, points, reached = budget_for_agreement(per_budget, 0.9, lambda p: 0.5)
    assert budget == OUTPUT_BUDGET_RANGE[0] and reached == 0.5
    with pytest.raises(ValueError, match="agreement"):
        budget_for_agreement(per_budget, 1.0, agreement)

"""Calibration: ECE, exact binomial bounds, and a threshold whose agreement guarantee holds at the promised rate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from routed.binomial import binom_cdf, clopper_pearson_upper
from routed.calibrate import agreement_counts, guarantee_report, threshold_with_guarantee
from routed.reliability import expected_calibration_error, reliability_bins


def test_ece_of_a_calibrated_predictor_is_near_zero_and_of_an_overconfident_one_large():
    rng = np.random.default_rng(0)
    conf = rng.random(200_000)
    right = rng.random(conf.shape) < conf  # right with exactly the stated probability
    assert expected_calibration_error(conf, right) < 0.01
    overconfident = np.sqrt(conf)  # says sqrt(p) when right with probability p
    assert expected_calibration_error(overconfident, right) > 0.1
    # the ECE of sqrt(p) against p is E|sqrt(p) - p| = 1/6 for uniform p (up to binning)
    assert expected_calibration_error(overconfident, right, n_bins=50) == pytest.approx(1 / 6, abs=0.01)


def test_reliability_bins_count_every_token_once():
    conf = np.array([0.0, 0.05, 0.5, 0.99, 1.0])
    bins = reliability_bins(conf, [True, False, True, True, False], n_bins=10)
    assert bins["count"].sum() == 5 and bins["count"][-1] == 2  # confidence 1.0 joins the top bin
    assert np.isnan(bins["accuracy"][3]) and bins["accuracy"][0] == 0.5
    for bad in ([0.5, 1.2], [np.nan, 0.1]):
        with pytest.raises(ValueError, match="confidence"):
            reliability_bins(bad, [True, False])
    with pytest.raises(ValueError, match="no tokens"):
        reliability_bins([], [])


@pytest.mark.parametrize("k, n, p", [(0, 10, 0.1), (3, 10, 0.5), (5, 50, 0.05), (49, 50, 0.9), (10, 200, 0.03), (2, 3, 0.999)])
def test_binomial_cdf_matches_the_sum_of_probabilities(k, n, p):
    direct = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))
    assert binom_cdf(k, n, p) == pytest.approx(direct, rel=1e-9, abs=1e-15)


def test_clopper_pearson_bound_solves_its_equation():
    assert clopper_pearson_upper(0, 100, 0.1) == pytest.approx(1 - 0.1 ** (1 / 100), rel=1e-7)  # closed form at k = 0
    k, n = np.array([1, 7, 40, 300]), np.array([10, 100, 1000, 5000])
    bound = clopper_pearson_upper(k, n, 0.05)
    np.testing.assert_allclose(binom_cdf(k, n, bound), 0.05, rtol=1e-5)
    assert (bound > k / n).all()
    assert clopper_pearson_upper(5, 5, 0.1) == 1.0 and clopper_pearson_upper(0, 0, 0.1) == 1.0


def synthetic(rng, n: int):
    """Confidences uniform on [0, 1]; a token disagrees with the last layer with probability (1 - c)^2 / 2.

    The disagreement rate of the tokens at or above t is then (1 - t)^2 / 6.
    """
    conf = rng.random(n)
    agrees = rng.random(n) >= 0.5 * (1 - conf) ** 2
    return conf, agrees


def test_the_guarantee_holds_at_the_promised_rate_over_repeated_draws():
    epsilon, delta, draws = 0.05, 0.1, 200
    lowest_safe = 1 - math.sqrt(6 * epsilon)  # below it the true disagreement rate exceeds epsilon
    rng = np.random.default_rng(1)
    grid = np.linspace(0, 1, 201)
    violations = naive_violations = 0
    picked = []
    for _ in range(draws):
        conf, agrees = synthetic(rng, 2000)
        result = threshold_with_guarantee(conf, agrees, epsilon, delta, grid=201)
        picked.append(result["threshold"])
        violations += result["threshold"] is not None and result["threshold"] < lowest_safe
        n, k = agreement_counts(conf, agrees, grid)  # the plug-in rule: lowest threshold with rate <= epsilon
        naive_violations += grid[(n > 0) & (k <= epsilon * n)].min() < lowest_safe
    slack = 3 * math.sqrt(draws * delta * (1 - delta))
    assert violations <= delta * draws + slack
    assert naive_violations > 0.3 * draws  # the same draws do catch a rule without the bound
    assert all(t is not None for t in picked) and np.median(picked) < lowest_safe + 0.15  # and it still routes


def test_no_threshold_meeting_the_guarantee_falls_back_to_deep_only():
    rng = np.random.default_rng(2)
    conf = rng.random(500)
    result = threshold_with_guarantee(conf, np.zeros(500, bool), 0.05, 0.1)  # every shallow token disagrees
    assert result["threshold"] is None and result["tested"] == 1
    result = threshold_with_guarantee(conf, np.ones(500, bool), 1e-4, 0.01)  # 500 tokens cannot certify 99.99%
    assert result["threshold"] is None and result["tested"] == 0 and result["min_shallow"] > 500


def test_agreement_counts_follow_the_routing_rule():
    conf = np.array([0.1, 0.5, 0.5, 0.9])
    agrees = np.array([True, False, True, False])
    shallow, disagree = agreement_counts(conf, agrees, [0.0, 0.5, 0.51, 1.0])
    assert shallow.tolist() == [4, 3, 1, 0] and disagree.tolist() == [2, 2, 1, 0]


def test_guarantee_report_checks_the_test_split():
    rng = np.random.default_rng(3)
    grid = np.linspace(0, 1, 101)
    counts = []
    for _ in range(2):
        conf, agrees = synthetic(rng, 5000)
        n, k = agreement_counts(conf, agrees, grid)
        counts.append({"shallow": n, "disagree": k, "tokens": 5000})
    report = guarantee_report(counts[0], counts[1], grid, 0.05, 0.1)
    j = int(round(report["threshold"] * 100))
    assert report["test"]["shallow"] == counts[1]["shallow"][j]
    assert report["test"]["held"] == (counts[1]["disagree"][j] <= 0.05 * counts[1]["shallow"][j])


@pytest.mark.parametrize("epsilon, delta, name", [(0.0, 0.1, "epsilon"), (1.0, 0.1, "epsilon"), (0.05, 0.0, "delta"),
                                                  (0.05, 1.5, "delta"), (float("nan"), 0.1, "epsilon")])
def test_epsilon_and_delta_outside_zero_one_are_refused(epsilon, delta, name):
    with pytest.raises(ValueError, match=f"^{name}: must be a number strictly between 0 and 1"):
        threshold_with_guarantee(np.array([0.5]), np.array([True]), epsilon, delta)

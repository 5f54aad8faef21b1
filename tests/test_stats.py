"""Intervals over replicates: textbook values, the coverage they promise, and the verdicts they give."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from transferability.study.stats import Estimate, t_interval, verdict, welch_interval


def test_t_interval_matches_the_textbook():
    e = t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.776445105 * np.sqrt(2.5) / np.sqrt(5)  # t(0.975, 4) * sd / sqrt(n)
    assert e.mean == 3.0 and e.std == pytest.approx(np.sqrt(2.5))
    assert (e.low, e.high) == pytest.approx((3 - half, 3 + half))
    assert e.replicates == 5
    assert t_interval([0.7]) == Estimate(0.7, None, None, None, 1)


def test_the_95_percent_interval_covers_the_true_mean_95_percent_of_the_time():
    rng = np.random.default_rng(2014)
    for n in (3, 5, 10):
        hits = 0
        for _ in range(4000):
            e = t_interval(list(rng.normal(0.84, 0.01, n)))
            hits += e.low <= 0.84 <= e.high
        assert 0.935 <= hits / 4000 <= 0.965, (n, hits / 4000)


def test_welch_interval_matches_scipy():
    a, b = [0.31, 0.35, 0.29, 0.33], [0.20, 0.26, 0.21]
    e = welch_interval(a, b)
    ref = sps.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert e.mean == pytest.approx(np.mean(a) - np.mean(b))
    assert (e.low, e.high) == pytest.approx((ref.low, ref.high))
    assert welch_interval(a, [0.2]).low is None  # one replicate on a side: no interval


@pytest.mark.parametrize("low, high, positive, expected", [
    (0.01, 0.05, True, "holds"), (-0.05, -0.01, True, "does not hold"), (-0.01, 0.05, True, "inconclusive"),
    (-0.05, -0.01, False, "holds"), (0.01, 0.05, False, "does not hold"), (None, None, True, "inconclusive")])
def test_verdicts_follow_the_interval(low, high, positive, expected):
    assert verdict(Estimate(0.0, None, low, high, 3), positive=positive) == expected


@pytest.mark.parametrize("low, high, expected", [
    (0.011, 0.03, "holds"),            # wholly above the margin
    (0.001, 0.03, "holds"),            # above zero, straddling the margin: a real effect, maybe of interest
    (0.001, 0.0099, "does not hold"),  # real but below the smallest effect of interest
    (-0.004, 0.0099, "does not hold"),  # no effect worth the name
    (-0.03, -0.011, "does not hold"),  # the opposite effect
    (-0.004, 0.01, "inconclusive"),    # touches the margin: cannot rule out an effect of interest
    (-0.004, 0.03, "inconclusive"),    # straddles both 0 and the margin
    (0.0, 0.03, "inconclusive"),       # zero itself is not excluded
])
def test_verdicts_weigh_the_interval_against_the_margin(low, high, expected):
    assert verdict(Estimate((low + high) / 2, None, low, high, 5), margin=0.01) == expected


def test_a_claimed_negative_effect_mirrors_the_margin():
    assert verdict(Estimate(-0.005, None, -0.009, 0.002, 5), margin=0.01, positive=False) == "does not hold"
    assert verdict(Estimate(-0.02, None, -0.03, -0.012, 5), margin=0.01, positive=False) == "holds"
    assert verdict(Estimate(-0.01, None, -0.03, 0.002, 5), margin=0.01, positive=False) == "inconclusive"

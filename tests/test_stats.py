"""Intervals over replicates: textbook values, the coverage they promise, and the verdicts they give."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from transferability.stats import Estimate, t_interval, verdict, welch_interval


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
    assert verdict(Estimate(0.0, None, low, high, 3), positive) == expected

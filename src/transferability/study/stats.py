"""Means, spreads and 95% intervals over replicates, and the verdict an interval supports.

A replicate is one (split, seed): every network of the experiment trained once more from other
random draws (and, across random splits, other class halves, as the study pooled them). An effect
is computed per replicate first, then summarised: Student's t interval on the replicates' values,
or Welch's on the difference of two groups of replicates (different splits). With one replicate
there is no interval and no verdict but "inconclusive". A verdict weighs the interval against zero
and against the smallest effect of interest (``report.margin``), so that a well-measured absence of
an effect is a decisive "does not hold" rather than an "inconclusive".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats as sps

LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    mean: float
    std: float | None  # sample standard deviation of the replicates (ddof 1)
    low: float | None  # the interval's bounds
    high: float | None
    replicates: int

    def as_dict(self, digits: int = 6) -> dict[str, float | int | list[float] | None]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, digits)

        return {"mean": r(self.mean), "std": r(self.std), "ci95": None if self.low is None else
                [r(self.low), r(self.high)], "replicates": self.replicates}


def t_interval(values: list[float], level: float = LEVEL) -> Estimate:
    """Mean and Student's t interval of independent replicates."""
    n = len(values)
    if n == 0:
        raise ValueError("no replicates")
    m = sum(values) / n
    if n == 1:
        return Estimate(m, None, None, None, 1)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    half = float(sps.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)  # a float: JSON takes no numpy types
    return Estimate(m, sd, m - half, m + half, n)


def welch_interval(a: list[float], b: list[float], level: float = LEVEL) -> Estimate:
    """Mean(a) - mean(b) with Welch's interval (unequal variances); replicates = len(a) + len(b)."""
    ea, eb = t_interval(a), t_interval(b)
    diff = ea.mean - eb.mean
    if ea.std is None or eb.std is None:
        return Estimate(diff, None, None, None, len(a) + len(b))
    va, vb = ea.std**2 / len(a), eb.std**2 / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return Estimate(diff, 0.0, diff, diff, len(a) + len(b))
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(sps.t.ppf(0.5 + level / 2, df)) * se
    return Estimate(diff, se, diff - half, diff + half, len(a) + len(b))


def verdict(est: Estimate, margin: float = 0.0, positive: bool = True) -> str:
    """The verdict an interval supports, with ``margin`` the smallest effect worth the name.

    'does not hold' when the whole interval lies below the margin (no effect worth the name, or the
    opposite one); else 'holds' when it lies above zero on the claimed side; else 'inconclusive' (the
    interval straddles both 0 and the margin, or there is none). ``positive=False`` claims a negative
    effect. With margin 0 this is the plain sign test of the interval."""
    if est.low is None:
        return "inconclusive"
    low, high = (est.low, est.high) if positive else (-est.high, -est.low)
    if high < margin:
        return "does not hold"
    if low > 0:
        return "holds"
    return "inconclusive"

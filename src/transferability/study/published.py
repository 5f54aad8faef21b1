"""The study's own numbers (Yosinski et al. 2014, ``results.csv`` from its repository) in our roles,
so every finding and Figure 2 can be read beside the study's.

The study trained few fine-tuned networks (one or two per n), its selffer runs were A->A and its
transfers A->B and B->A, so no replicate of the study holds every role. Its effects are therefore
taken as the paper takes them, from role means: each role's mean top-1 at n minus the mean of the
eight random-split half bases (62.51%). That reproduces the study's Table 1: AnB+ - BnB+ +1.56
points over n = 1..7, +1.76 over n = 5..7; AnB+ - baseB +1.67 over n = 1..7.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from functools import cache
from statistics import mean
from typing import Any

from transferability import REFERENCE

RESULTS = REFERENCE / "results.csv"
# results.csv's variants as our roles (target T, source S); the 1000-class random-filter control is RnT
ROLES = {"base": "base", "selffer": "TnT", "selffer_ft": "TnT+", "transfer": "SnT", "transfer_ft": "SnT+"}
ALL_N = tuple(range(1, 8))


@cache
def _rows() -> tuple[dict[str, Any], ...]:
    with open(RESULTS) as f:
        return tuple({**r, "n": int(r["n"]), "top1": float(r["top1"])} for r in csv.DictReader(f))


def points(split: str, target: str) -> list[dict[str, Any]]:
    """The study's networks for one split and target half, in our roles (its own splits only)."""
    return [{"role": ROLES[r["variant"]], "n": r["n"], "top1": r["top1"]} for r in _rows()
            if r["split"] == split and r["target"] == target and r["variant"] in ROLES]


@cache
def curves() -> dict[str, dict[int, float]]:
    """role -> n -> the study's mean top-1 minus its mean half base over the random splits (fractions);
    RnT from the 1000-class random-filter networks, minus the 1000-class base."""
    rand = [r for r in _rows() if r["split"].startswith("random")]
    base = mean(r["top1"] for r in rand if r["variant"] == "base")
    groups: dict[tuple[str, int], list[float]] = defaultdict(list)
    for r in rand:
        if r["variant"] in ROLES and r["variant"] != "base":
            groups[(ROLES[r["variant"]], r["n"])].append(r["top1"] - base)
    base1000 = next(r["top1"] for r in _rows() if r["variant"] == "base1000")
    for r in _rows():
        if r["variant"] == "random_frozen":
            groups[("RnT", r["n"])].append(r["top1"] - base1000)
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for (role, n), values in sorted(groups.items()):
        out[role][n] = mean(values)
    return dict(out)


def boost(against: str, ns: tuple[int, ...]) -> float:
    """The study's Table 1: mean over ``ns`` of AnB+ minus BnB+ (``against='TnT+'``) or minus the base."""
    c = curves()
    return mean(c["SnT+"][n] - (c["TnT+"][n] if against == "TnT+" else 0.0) for n in ns)


def _dissimilar_drop() -> float:
    """Drop below the base (base - mean AnB over n) on the natural/man-made split minus on random splits."""
    bases = {(r["split"], r["target"]): r["top1"] for r in _rows() if r["variant"] == "base"}

    def drop(splits: set[str]) -> float:
        return mean(bases[(r["split"], r["target"])] - r["top1"] for r in _rows()
                    if r["split"] in splits and r["variant"] == "transfer")

    rand = {r["split"] for r in _rows() if r["split"].startswith("random")}
    return drop({"natman"}) - drop(rand)


@cache
def effects() -> dict[str, float]:
    """The study's value of each effect the findings measure, under the finding's name."""
    c = curves()
    return {"specificity": c["TnT"][7] - c["SnT"][7],
            "fragile co-adaptation": -mean(c["TnT"][n] for n in (3, 4, 5)),
            "fine-tuning boost": boost("TnT+", ALL_N),
            "dissimilar tasks transfer worse": _dissimilar_drop(),
            "random frozen filters": (c["RnT"][1] - c["RnT"][7]) - (c["SnT"][1] - c["SnT"][7])}

"""The study's findings, tested on the user's runs: an effect size per finding, its 95% interval
over replicates, and a verdict.

Notation (target half T, source half S): base = baseT; TnT = first n layers from baseT, frozen
(BnB for T = B); SnT = from the other half's base (AnB); '+' = fine-tuned; RnT = random frozen
filters. A replicate is one (split, seed, target): random splits and both directions (AnB and
BnA) are pooled, as in the study's Figure 2. Every effect is computed within a replicate, then
summarised over replicates (stats.py); the dissimilar-split finding compares two groups of
replicates (Welch). Positive effects are in the direction the study claims.
"""

from __future__ import annotations

from collections import defaultdict
from statistics import mean
from typing import Any

from .runs import role
from .stats import Estimate, t_interval, verdict, welch_interval

MIDDLE = (3, 4, 5)  # where the study saw BnB's co-adaptation dip
ALL_N = tuple(range(1, 8))

Replicate = dict[tuple[str, int], float]  # (role, n) -> top-1 (the study's metric); base at n = 0


def replicates(rows: list[dict[str, Any]]) -> dict[tuple[str, int, str], Replicate]:
    """(split, seed, target) -> accuracy by role and n."""
    out: dict[tuple[str, int, str], Replicate] = defaultdict(dict)
    for r in rows:
        fam, target = r["family"], r["target"]
        key = ("base", 0) if fam.startswith("base") else (role(fam, target), r["n"])
        out[(r["split"], r["seed"], target)][key] = r["top1_kbest"]
    return dict(out)


def _has(rep: Replicate, roles: tuple[str, ...], ns: tuple[int, ...]) -> bool:
    return all((r, 0 if r == "base" else n) in rep for r in roles for n in ns)


def _over(reps: list[Replicate], roles: tuple[str, ...], ns: tuple[int, ...], effect) -> Estimate | None:
    values = [effect(rep) for rep in reps if _has(rep, roles, ns)]
    return t_interval(values) if values else None


def _drop(rep: Replicate) -> float:
    """How far copying frozen layers from the other half falls below the base, averaged over n."""
    return rep[("base", 0)] - mean(rep[("SnT", n)] for n in ALL_N)


def evaluate(rows: list[dict[str, Any]], random_splits: list[str],
             dissimilar_splits: list[str]) -> list[dict[str, Any]]:
    """Every finding that the runs can speak to, in the study's order."""
    reps = replicates(rows)
    similar = [rep for (split, _, _), rep in sorted(reps.items()) if split in random_splits]
    dissimilar = [rep for (split, _, _), rep in sorted(reps.items()) if split in dissimilar_splits]
    out = []

    def add(name: str, claim: str, measure: str, est: Estimate | None, ver: str | None = None,
            **detail: Any) -> None:
        if est is not None:
            out.append({"finding": name, "claim": claim, "effect": measure, "estimate": est,
                        "verdict": ver or verdict(est), **detail})

    per_n = {n: _over(similar, ("TnT", "SnT"), (n,), lambda r, n=n: r[("TnT", n)] - r[("SnT", n)]) for n in ALL_N}
    per_n = {n: e for n, e in per_n.items() if e is not None}
    if per_n:
        holds = [n for n in per_n if all(verdict(per_n[m]) == "holds" for m in per_n if m >= n)]
        top = max(per_n)
        add("specificity", "SnT (AnB) falls below TnT (BnB) at higher layers",
            f"TnT - SnT at n = {top}", per_n[top],
            by_n={n: {**e.as_dict(), "verdict": verdict(e)} for n, e in per_n.items()},
            starts_at=min(holds) if holds else None)

    dip = _over(similar, ("base", "TnT"), MIDDLE, lambda r: r[("base", 0)] - mean(r[("TnT", n)] for n in MIDDLE))
    dip_ft = _over(similar, ("base", "TnT+"), MIDDLE,
                   lambda r: r[("base", 0)] - mean(r[("TnT+", n)] for n in MIDDLE))
    if dip is not None and dip_ft is not None:
        both = "holds" if verdict(dip) == "holds" and verdict(dip_ft) != "holds" else (
            "does not hold" if verdict(dip) == "does not hold" else "inconclusive")
        add("fragile co-adaptation", "TnT (BnB) dips below the base in the middle layers; TnT+ (BnB+) does not",
            "base - mean TnT over n = 3..5", dip, both, fine_tuned=dip_ft.as_dict(),
            fine_tuned_verdict=verdict(dip_ft, positive=False))

    add("fine-tuning boost", "SnT+ (AnB+) is above the base, on average over n",
        "mean SnT+ over n = 1..7 - base",
        _over(similar, ("base", "SnT+"), ALL_N, lambda r: mean(r[("SnT+", n)] for n in ALL_N) - r[("base", 0)]))

    a = [_drop(r) for r in dissimilar if _has(r, ("base", "SnT"), ALL_N)]
    b = [_drop(r) for r in similar if _has(r, ("base", "SnT"), ALL_N)]
    if a and b:
        add("dissimilar tasks transfer worse", "SnT (AnB) drops more below the base on the dissimilar split",
            "drop on dissimilar - drop on random splits (drop = base - mean SnT over n = 1..7)",
            welch_interval(a, b))

    add("random frozen filters", "accuracy falls with n far faster with random filters than with trained ones",
        "(RnT(1) - RnT(7)) - (SnT(1) - SnT(7))",
        _over(similar, ("RnT", "SnT"), (1, 7),
              lambda r: (r[("RnT", 1)] - r[("RnT", 7)]) - (r[("SnT", 1)] - r[("SnT", 7)])))
    return out


def as_json(found: list[dict[str, Any]]) -> dict[str, Any]:
    return {f["finding"]: {"effect": f["effect"], **f["estimate"].as_dict(), "verdict": f["verdict"],
                           **{k: v for k, v in f.items() if k not in ("finding", "claim", "effect", "estimate",
                                                                      "verdict")}}
            for f in found}


def table(found: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    header = ["finding", "claim", "effect measured", "estimate", "95% interval", "replicates", "verdict"]
    rows = []
    for f in found:
        e = f["estimate"]
        ci = "" if e.low is None else f"[{e.low:+.4f}, {e.high:+.4f}]"
        extra = f" (holds from n = {f['starts_at']})" if f.get("starts_at") else ""
        rows.append([f["finding"], f["claim"], f["effect"], f"{e.mean:+.4f}", ci, str(e.replicates),
                     f["verdict"] + extra])
    return header, rows

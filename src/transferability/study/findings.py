"""The study's findings, tested on the user's runs: an effect size per finding, its 95% interval
over replicates, a verdict, and the study's own value beside it.

Notation (target half T, source half S): base = baseT; TnT = first n layers from baseT, frozen
(BnB for T = B); SnT = from the other half's base (AnB); '+' = fine-tuned; RnT = random frozen
filters. Every effect is computed inside one (split, seed, target) first. The replicate is the
independent training unit, one (split, seed): the two directions of a unit share both bases (baseA
is AnB's source and AnA's base), so their effects are averaged into one value before the interval
is taken over units. The dissimilar-split finding compares two groups of units (Welch). Positive
effects are in the direction the study claims; a verdict weighs the interval against 0 and the
smallest effect of interest, ``report.margin`` (stats.verdict).

The study's n runs over AlexNet's 1..7; on another architecture the same findings are read over the
n the experiment trains (``ns``): the middle third for the dip, the first and last n for the random
filters, and the study's own numbers are left out (they are AlexNet's).

The controls follow the study: the fine-tuning boost is judged against BnB+ (the same training
started from the target's own features), and the budget check asks whether BnB+, retrained from its
own base, beats that base: if it does, the bases are under-trained and the curves measure the budget.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from statistics import mean
from typing import Any

from transferability.runs import role
from transferability.study import published as study  # the study's own numbers
from transferability.study.stats import Estimate, t_interval, verdict, welch_interval

ALL_N = tuple(range(1, 8))  # AlexNet's n
TABLE1 = {"n = 1..7": ALL_N, "n = 3..7": (3, 4, 5, 6, 7), "n = 5..7": (5, 6, 7)}  # the study's Table 1 rows
# what an under-trained base confounds: each compares a role with the base it was not trained beside
CONFOUNDED = ("fragile co-adaptation", "fine-tuning boost over the base")

Replicate = dict[tuple[str, int], float]  # (role, n) -> top-1 (the study's metric); base at n = 0
Units = dict[tuple[str, int], list[Replicate]]  # (split, seed) -> its replicates, one per target half
Effect = Callable[[Replicate], float]


def _key(r: dict[str, Any]) -> tuple[str, int]:
    """A run's (role, n) in its replicate; the base at n = 0."""
    return ("base", 0) if r["family"].startswith("base") else (role(r["family"], r["target"]), r["n"])


def replicates(rows: list[dict[str, Any]]) -> dict[tuple[str, int, str], Replicate]:
    """(split, seed, target) -> accuracy by role and n."""
    out: dict[tuple[str, int, str], Replicate] = defaultdict(dict)
    for r in rows:
        out[(r["split"], r["seed"], r["target"])][_key(r)] = r["top1_kbest"]
    return dict(out)


def unlearned(rows: list[dict[str, Any]], splits: list[str], roles: tuple[str, ...],
              ns: tuple[int, ...]) -> list[str]:
    """The networks that did not learn (``learned: false``, health.py) among those an effect over
    ``roles`` at ``ns`` reads in the units of ``splits``, as split/seed<k>/<network>."""
    flagged = {(r["split"], r["seed"], r["target"], _key(r)):
               f"{r['split']}/seed{r['seed']}/{r.get('network') or r['family'].replace('n', str(r['n']), 1)}"
               for r in rows if r.get("learned") is False}
    out = []
    for (split, seed, target), rep in sorted(replicates(rows).items()) if flagged else ():
        if split in splits and _has(rep, roles, ns):
            out += [flagged[k] for rl in roles for n in ((0,) if rl == "base" else ns)
                    if (k := (split, seed, target, (rl, n))) in flagged]
    return out


def units(rows: list[dict[str, Any]], splits: list[str]) -> Units:
    """The independent training units (split, seed) of ``splits``, each with its target halves."""
    out: Units = defaultdict(list)
    for (split, seed, _), rep in sorted(replicates(rows).items()):
        if split in splits:
            out[(split, seed)].append(rep)
    return dict(out)


def _has(rep: Replicate, roles: tuple[str, ...], ns: tuple[int, ...]) -> bool:
    return all((r, 0 if r == "base" else n) in rep for r in roles for n in ns)


def unit_values(us: Units, roles: tuple[str, ...], ns: tuple[int, ...], effect: Effect) -> list[float]:
    """One value per unit: the effect averaged over the unit's target halves that have its roles."""
    out = []
    for reps in us.values():
        values = [effect(rep) for rep in reps if _has(rep, roles, ns)]
        if values:
            out.append(mean(values))
    return out


def over(us: Units, roles: tuple[str, ...], ns: tuple[int, ...], effect: Effect) -> Estimate | None:
    values = unit_values(us, roles, ns, effect)
    return t_interval(values) if values else None


def middle(ns: tuple[int, ...]) -> tuple[int, ...]:
    """The middle third of the n (AlexNet's 1..7: 3, 4, 5, where the study saw BnB's dip)."""
    return ns[len(ns) // 3 : len(ns) - len(ns) // 3] or ns


def _span(ns: tuple[int, ...]) -> str:
    return f"n = {ns[0]}..{ns[-1]}" if ns == tuple(range(ns[0], ns[-1] + 1)) else f"n = {', '.join(map(str, ns))}"


def _drop(ns: tuple[int, ...]) -> Effect:
    """How far copying frozen layers from the other half falls below the base, averaged over n."""
    return lambda rep: rep[("base", 0)] - mean(rep[("SnT", n)] for n in ns)


def role_minus_base(us: Units, want: str, n: int) -> Estimate | None:
    return over(us, ("base", want), (n,), lambda r: r[(want, n)] - r[("base", 0)])


def boost(us: Units, against: str, ns: tuple[int, ...]) -> Estimate | None:
    """Mean over ``ns`` of SnT+ minus TnT+ (``against='TnT+'``) or minus the base."""
    if against == "base":
        return over(us, ("base", "SnT+"), ns, lambda r: mean(r[("SnT+", n)] for n in ns) - r[("base", 0)])
    return over(us, ("SnT+", "TnT+"), ns, lambda r: mean(r[("SnT+", n)] - r[("TnT+", n)] for n in ns))


def _judged(est: Estimate, margin: float, study_value: float | None = None, positive: bool = True) -> dict[str, Any]:
    return {**est.as_dict(), "verdict": verdict(est, margin, positive), "study": study_value}


def evaluate(rows: list[dict[str, Any]], random_splits: list[str], dissimilar_splits: list[str],
             margin: float = 0.0, ns: tuple[int, ...] = ALL_N, alexnet: bool = True) -> list[dict[str, Any]]:
    """Every finding that the runs can speak to, in the study's order, over ``ns`` (the experiment's n);
    ``alexnet``: the study's own numbers beside ours."""
    similar = units(rows, random_splits)
    dissimilar = units(rows, dissimilar_splits)
    ref = study.effects() if alexnet else {}
    ns = tuple(sorted(ns))
    mid, table_rows = middle(ns), TABLE1 if alexnet and ns == ALL_N else {_span(ns): ns}
    out = []

    def add(name: str, claim: str, measure: str, est: Estimate | None, reads: list[tuple], ver: str | None = None,
            **detail: Any) -> None:
        """``reads``: (splits, roles, ns) of every network the estimate is computed from."""
        if est is not None:
            out.append({"finding": name, "claim": claim, "effect": measure, "estimate": est,
                        "verdict": ver or verdict(est, margin), "study": ref.get(name), **detail,
                        "not_learned": sorted({x for r in reads for x in unlearned(rows, *r)})})

    per_n = {n: over(similar, ("TnT", "SnT"), (n,), lambda r, n=n: r[("TnT", n)] - r[("SnT", n)]) for n in ns}
    per_n = {n: e for n, e in per_n.items() if e is not None}
    if per_n:
        holds = [n for n in per_n if all(verdict(per_n[m], margin) == "holds" for m in per_n if m >= n)]
        top = max(per_n)
        add("specificity", "SnT (AnB) falls below TnT (BnB) at higher layers",
            f"TnT - SnT at n = {top}", per_n[top], [(random_splits, ("TnT", "SnT"), tuple(per_n))],
            by_n={n: {**e.as_dict(), "verdict": verdict(e, margin)} for n, e in per_n.items()},
            starts_at=min(holds) if holds else None)

    dip = over(similar, ("base", "TnT"), mid, lambda r: r[("base", 0)] - mean(r[("TnT", n)] for n in mid))
    dip_ft = over(similar, ("base", "TnT+"), mid, lambda r: r[("base", 0)] - mean(r[("TnT+", n)] for n in mid))
    if dip is not None and dip_ft is not None:
        frozen, tuned = verdict(dip, margin), verdict(dip_ft, margin)
        both = ("does not hold" if frozen == "does not hold" or tuned == "holds" else
                "holds" if frozen == "holds" and tuned == "does not hold" else "inconclusive")
        add("fragile co-adaptation", "TnT (BnB) dips below the base in the middle layers; TnT+ (BnB+) does not",
            f"base - mean TnT over {_span(mid)}", dip, [(random_splits, ("base", "TnT", "TnT+"), mid)], both,
            fine_tuned=dip_ft.as_dict(),
            fine_tuned_dip_verdict=tuned)

    table1 = {f"{against} {label}": _judged(e, margin, study.boost(against, part) if alexnet else None)
              for against in ("TnT+", "base") for label, part in table_rows.items()
              if (e := boost(similar, against, part)) is not None}
    add("fine-tuning boost", "SnT+ (AnB+) beats TnT+ (BnB+), the same training from the target's own features",
        f"mean SnT+ - TnT+ over {_span(ns)}", boost(similar, "TnT+", ns),
        [(random_splits, ("SnT+", "TnT+"), ns), (random_splits, ("base", "SnT+"), ns)], table1=table1)

    a = unit_values(dissimilar, ("base", "SnT"), ns, _drop(ns))
    b = unit_values(similar, ("base", "SnT"), ns, _drop(ns))
    if a and b:
        add("dissimilar tasks transfer worse", "SnT (AnB) drops more below the base on the dissimilar split",
            f"drop on dissimilar - drop on random splits (drop = base - mean SnT over {_span(ns)})",
            welch_interval(a, b), [(s, ("base", "SnT"), ns) for s in (dissimilar_splits, random_splits)])

    lo, hi = ns[0], ns[-1]
    if hi > lo:
        add("random frozen filters", "accuracy falls with n far faster with random filters than with trained ones",
            f"(RnT({lo}) - RnT({hi})) - (SnT({lo}) - SnT({hi}))",
            over(similar, ("RnT", "SnT"), (lo, hi),
                 lambda r: (r[("RnT", lo)] - r[("RnT", hi)]) - (r[("SnT", lo)] - r[("SnT", hi)])),
            [(random_splits, ("RnT", "SnT"), (lo, hi))])
    return out


def budget_check(rows: list[dict[str, Any]], random_splits: list[str], margin: float,
                 ns: tuple[int, ...] = ALL_N, alexnet: bool = True) -> dict[str, Any] | None:
    """BnB+ - base at every n, pooled over units: a base on its plateau is not beaten by a network
    retrained from it (the study: within 0.9 points). The check passes where every interval lies within
    +-margin (an effect smaller than the margin, even a significant one, is no effect worth the name);
    ``warning`` says in words what it means where one does not, or is None."""
    us = units(rows, random_splits)
    by_n = {n: e for n in sorted(ns) if (e := role_minus_base(us, "TnT+", n)) is not None}
    if not by_n:
        return None
    ref = study.curves()["TnT+"] if alexnet else {}
    entries = {n: {**e.as_dict(), "within_margin": e.low is not None and -margin <= e.low and e.high <= margin,
                   "study": ref.get(n)} for n, e in by_n.items()}
    outside = [n for n in by_n if not entries[n]["within_margin"]]
    above = [n for n in outside if by_n[n].low is not None and by_n[n].low > 0]  # above the base, past the margin
    wide = [n for n in outside if n not in above]
    if all(e.low is None for e in by_n.values()):
        warning = ("convergence not shown: one replicate gives no interval; train two or more units (experiment.splits "
                   "x seeds) to check that BnB+ stays within the margin of its base")
    elif above:
        worst = max(above, key=lambda n: by_n[n].mean)
        warning = (f"the bases look under-trained: BnB+ (retrained from its own base) beats the base at "
                   f"n = {', '.join(map(str, above))} (by {by_n[worst].mean:+.4f} at n = {worst}), so the curves "
                   f"measure the training budget as well as transfer; this confounds: {', '.join(CONFOUNDED)}. "
                   "Train longer (train.epochs) until doubling the budget no longer moves the base "
                   "(benchmarks/convergence.py); where it already does not, more replicates (experiment.splits x "
                   "seeds) tell whether the excess is real.")
    elif wide:
        warning = (f"convergence not shown: BnB+ - base is not within +-{margin} at n = {', '.join(map(str, wide))} "
                   "(the interval is wider than the margin, or BnB+ falls below the base); more replicates "
                   f"would tell; until then read {', '.join(CONFOUNDED)} with care.")
    else:
        warning = None
    return {"effect": "TnT+ - base (BnB+ - baseB)", "margin": margin, "by_n": entries,
            "passes": warning is None, "warning": warning}


def as_json(found: list[dict[str, Any]]) -> dict[str, Any]:
    return {f["finding"]: {"effect": f["effect"], **f["estimate"].as_dict(), "verdict": f["verdict"],
                           **{k: v for k, v in f.items() if k not in ("finding", "claim", "effect", "estimate",
                                                                      "verdict")}}
            for f in found}


def _ci(low: float | None, high: float | None) -> str:
    return "" if low is None else f"[{low:+.4f}, {high:+.4f}]"


def _study(value: float | None) -> str:
    return "" if value is None else f"{value:+.4f}"


def table(found: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    header = ["finding", "claim", "effect measured", "estimate", "95% interval", "replicates", "verdict",
              "the study (ImageNet)", "includes networks that did not learn"]
    rows = []
    for f in found:
        e = f["estimate"]
        extra = f" (holds from n = {f['starts_at']})" if f.get("starts_at") else ""
        rows.append([f["finding"], f["claim"], f["effect"], f"{e.mean:+.4f}", _ci(e.low, e.high), str(e.replicates),
                     f["verdict"] + extra, _study(f["study"]), not_learned_words(f.get("not_learned", []))])
    return header, rows


def not_learned_words(names: list[str], show: int = 4) -> str:
    """'no', or how many networks that did not learn an estimate includes, and which."""
    if not names:
        return "no"
    listed = ", ".join(names[:show]) + (f" and {len(names) - show} more" if len(names) > show else "")
    return f"yes, {len(names)}: {listed}"


def boost_table(found: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]] | None:
    """The study's Table 1: the fine-tuning boost against BnB+ and against the base, over three ranges of n."""
    f = next((f for f in found if f["finding"] == "fine-tuning boost"), None)
    if f is None:
        return None
    header = ["AnB+ minus", "layers", "estimate", "95% interval", "verdict", "the study (ImageNet)"]
    rows = [[key.split(" ", 1)[0].replace("TnT+", "BnB+ (TnT+)"), key.split(" ", 1)[1], f"{v['mean']:+.4f}",
             _ci(*(v["ci95"] or (None, None))), v["verdict"], _study(v["study"])] for key, v in f["table1"].items()]
    return header, rows


def budget_table(check: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    header = ["n", "BnB+ - base", "95% interval", f"within +-{check['margin']}", "the study (ImageNet)"]
    rows = [[n, f"{e['mean']:+.4f}", _ci(*(e["ci95"] or (None, None))), "yes" if e["within_margin"] else "no",
             _study(e["study"])] for n, e in check["by_n"].items()]
    return header, rows

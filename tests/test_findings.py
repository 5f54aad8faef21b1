"""The study's findings computed from runs with known effects: verdicts, units and the budget check."""

from __future__ import annotations

import numpy as np
import pytest

from transferability.study import published as study
from transferability.study.findings import budget_check, evaluate, replicates, units
from transferability.study.stats import t_interval


def runs(seeds: int, dip: float = -0.01, noise: float = 0.003, ft_gain: float = 0.01, boost: float = 0.005,
         split_seed: int = 0) -> list[dict]:
    """Rows as report.collect gives them; accuracies with the effects the tests expect: BnB+ is
    ``ft_gain`` above the base, AnB+ ``boost`` above BnB+."""
    rng = np.random.default_rng(split_seed)
    rows = []

    def add(split, seed, family, n, acc, target="B"):
        rows.append({"split": split, "seed": seed, "family": family, "n": n, "target": target,
                     "top1_kbest": acc + rng.normal(0, noise)})

    for seed in range(seeds):
        for split, base, slope in (("random0", 0.85, 0.02), ("dissimilar", 0.95, 0.04)):
            add(split, seed, "baseB", 0, base)
            add(split, seed, "baseA", 0, 0.95, target="A")
            for n in range(1, 8):
                add(split, seed, "BnB", n, base - (dip if n in (3, 4, 5) else 0.0))
                add(split, seed, "BnB+", n, base + ft_gain)
                add(split, seed, "AnB", n, base - 0.01 - slope * max(0, n - 3))
                add(split, seed, "AnB+", n, base + ft_gain + boost)
                add(split, seed, "RnB", n, base - 0.06 * n)
    return rows


def test_each_finding_gets_the_verdict_its_effect_deserves():
    found = {f["finding"]: f for f in evaluate(runs(4), ["random0"], ["dissimilar"])}
    assert list(found) == ["specificity", "fragile co-adaptation", "fine-tuning boost",
                           "dissimilar tasks transfer worse", "random frozen filters"]
    spec = found["specificity"]
    assert spec["verdict"] == "holds" and spec["estimate"].mean > 0.08
    assert spec["starts_at"] in (1, 2, 3, 4)  # TnT - SnT is 0.01 up to n = 3, then grows
    assert spec["by_n"][7]["ci95"][0] > 0
    assert found["fragile co-adaptation"]["verdict"] == "does not hold"  # BnB is above the base here
    assert found["fine-tuning boost"]["verdict"] == "holds"  # AnB+ - BnB+ = +0.005, margin 0
    assert found["fine-tuning boost"]["estimate"].mean == pytest.approx(0.005, abs=0.002)
    assert found["dissimilar tasks transfer worse"]["verdict"] == "holds"
    assert found["random frozen filters"]["verdict"] == "holds"
    assert all(f["estimate"].replicates == 4 for k, f in found.items() if k != "dissimilar tasks transfer worse")


def test_the_boost_is_judged_against_bnb_plus_and_the_margin_makes_it_decisive():
    """AnB+ beats the base by 0.035 only because BnB+ does too (an under-trained base): against BnB+
    the boost is 0.005, a real effect below a margin of 0.01, so it does not hold."""
    found = {f["finding"]: f for f in evaluate(runs(6, ft_gain=0.03), ["random0"], [], margin=0.01)}
    boost = found["fine-tuning boost"]
    assert boost["verdict"] == "does not hold" and boost["estimate"].high < 0.01
    t1 = boost["table1"]
    assert set(t1) == {f"{a} n = {r}" for a in ("TnT+", "base") for r in ("1..7", "3..7", "5..7")}
    assert t1["base n = 1..7"]["verdict"] == "holds" and t1["base n = 1..7"]["mean"] == pytest.approx(0.035, abs=0.003)
    assert t1["TnT+ n = 1..7"]["study"] == pytest.approx(0.0156, abs=1e-4)  # the study's Table 1
    assert t1["TnT+ n = 5..7"]["study"] == pytest.approx(0.0176, abs=1e-4)
    assert found["fragile co-adaptation"]["verdict"] == "does not hold"
    assert {f["finding"]: f["study"] for f in evaluate(runs(3), ["random0"], [])}["fine-tuning boost"] == \
        pytest.approx(study.boost("TnT+", tuple(range(1, 8))))


@pytest.mark.parametrize("boost, noise, expected", [
    (0.03, 0.004, "holds"), (0.012, 0.004, "holds"), (0.0, 0.004, "does not hold"), (0.007, 0.004, "does not hold"),
    (0.005, 0.02, "inconclusive"), (0.0, 0.02, "inconclusive")])
def test_three_outcomes_around_the_margin(boost, noise, expected):
    """3 replicates; the boost is a mean over 7 n. With noise 0.004 the interval is about +-0.005 wide:
    a boost of 0.03 or 0.012 clears zero, none or 0.007 lies below the 0.01 margin; with noise 0.02
    (about +-0.01 to 0.03) 0.005 and 0 straddle both zero and the margin."""
    found = {f["finding"]: f for f in evaluate(runs(3, boost=boost, noise=noise, split_seed=7), ["random0"], [],
                                               margin=0.01)}
    est = found["fine-tuning boost"]
    assert est["verdict"] == expected, est["estimate"]


def test_a_real_dip_holds_and_one_replicate_is_inconclusive():
    found = {f["finding"]: f for f in evaluate(runs(4, dip=0.02, ft_gain=0.0), ["random0"], [], margin=0.01)}
    assert found["fragile co-adaptation"]["verdict"] == "holds"
    assert found["fragile co-adaptation"]["fine_tuned_dip_verdict"] == "does not hold"
    assert "dissimilar tasks transfer worse" not in found  # no dissimilar split in the runs
    single = evaluate(runs(1), ["random0"], ["dissimilar"], margin=0.01)
    assert {f["verdict"] for f in single} == {"inconclusive"}
    assert all(f["estimate"].low is None for f in single)


def mirrored(rows: list[dict]) -> list[dict]:
    """The other direction of the same units: every family with A and B swapped."""
    return [{**r, "target": "A" if r["target"] == "B" else "B",
             "family": r["family"].replace("A", "X").replace("B", "A").replace("X", "B")} for r in rows]


def test_the_two_directions_of_a_unit_are_one_replicate():
    rows = runs(3)
    both = rows + mirrored(runs(3, split_seed=1))
    reps = replicates(both)
    assert len([k for k in reps if k[0] == "random0"]) == 6  # 3 seeds x 2 target halves
    us = units(both, ["random0"])
    assert sorted(us) == [("random0", 0), ("random0", 1), ("random0", 2)] and all(len(v) == 2 for v in us.values())
    found = {f["finding"]: f for f in evaluate(both, ["random0"], [])}
    est = found["fine-tuning boost"].get("estimate")
    assert est.replicates == 3  # units, not 6 target halves
    # the interval is over the units' averages of both directions, not over the six halves
    per_half = {key: np.mean([rep[("SnT+", n)] - rep[("TnT+", n)] for n in range(1, 8)])
                for key, rep in reps.items() if key[0] == "random0"}
    per_unit = [np.mean([per_half[("random0", s, t)] for t in "AB"]) for s in range(3)]
    assert (est.low, est.high) == pytest.approx((t_interval(per_unit).low, t_interval(per_unit).high))
    naive = t_interval(list(per_half.values()))
    assert naive.replicates == 6 and naive.high - naive.low < est.high - est.low


def test_the_budget_check_fires_on_under_trained_bases_and_stays_silent_on_converged_ones():
    under = budget_check(runs(4, ft_gain=0.03), ["random0"], 0.01)
    assert not under["passes"] and "look under-trained" in under["warning"]
    assert "fragile co-adaptation" in under["warning"] and "fine-tuning boost over the base" in under["warning"]
    # what to do: train longer, or, where doubling no longer moves the base, add replicates
    assert "Train longer (train.epochs)" in under["warning"] and "more replicates" in under["warning"]
    assert all(not e["within_margin"] and e["ci95"][0] > 0 for e in under["by_n"].values())
    assert under["by_n"][4]["study"] == pytest.approx(0.0036, abs=1e-4)  # the study's BnB+ - base at n = 4
    converged = budget_check(runs(4, ft_gain=0.0, noise=0.001), ["random0"], 0.01)
    assert converged["passes"] and converged["warning"] is None
    assert all(e["within_margin"] for e in converged["by_n"].values())
    small = budget_check(runs(4, ft_gain=0.004, noise=0.001), ["random0"], 0.01)  # above 0, within the margin
    assert small["passes"] and all(e["ci95"][0] > 0 and e["within_margin"] for e in small["by_n"].values())
    edge = budget_check(runs(4, ft_gain=0.009, noise=0.002), ["random0"], 0.01)  # above 0, past the margin at some n
    assert not edge["passes"] and "look under-trained" in edge["warning"]
    wide = budget_check(runs(2, ft_gain=0.0, noise=0.01), ["random0"], 0.01)  # 2 replicates: t = 12.7
    assert not wide["passes"] and "convergence not shown" in wide["warning"]
    one = budget_check(runs(1, ft_gain=0.0), ["random0"], 0.01)
    assert not one["passes"] and "one replicate gives no interval" in one["warning"]
    assert budget_check([r for r in runs(2) if r["family"] != "BnB+"], ["random0"], 0.01) is None


def test_the_verdicts_and_the_budget_check_go_into_json_as_the_report_writes_them():
    """Accuracies come from metrics.json as Python floats; every interval, flag and verdict must be JSON."""
    import json

    from transferability.study.findings import as_json

    rows = [{**r, "top1_kbest": float(r["top1_kbest"])} for r in runs(4, ft_gain=0.0, noise=0.001)]
    check = budget_check(rows, ["random0"], 0.01)
    found = as_json(evaluate(rows, ["random0"], ["dissimilar"], 0.01))
    back = json.loads(json.dumps({"budget_check": check, "findings": found}))
    assert back["budget_check"]["passes"] is True and back["budget_check"]["by_n"]["4"]["within_margin"] is True
    assert back["findings"]["fine-tuning boost"]["verdict"] in ("holds", "does not hold", "inconclusive")


def not_learning(rows: list[dict], which: set[tuple]) -> list[dict]:
    """``rows`` with the runs (split, seed, family, n) in ``which`` marked learned: false (health.py)."""
    return [{**r, "learned": (r["split"], r["seed"], r["family"], r["n"]) not in which} for r in rows]


def test_each_finding_says_whether_its_estimate_includes_networks_that_did_not_learn():
    """R7B of seed 1 read by the random-filters finding (n = 1 and 7) only; R4B by none; a dissimilar
    A5B by the dissimilar-split finding only; a BnB at n = 4 by specificity and the dip."""
    from transferability.study.findings import as_json, table

    rows = not_learning(runs(4), {("random0", 1, "RnB", 7), ("random0", 2, "RnB", 4), ("dissimilar", 3, "AnB", 5),
                                  ("random0", 0, "BnB", 4)})
    found = {f["finding"]: f for f in evaluate(rows, ["random0"], ["dissimilar"])}
    assert {k: f["not_learned"] for k, f in found.items()} == {
        "specificity": ["random0/seed0/B4B"], "fragile co-adaptation": ["random0/seed0/B4B"],
        "fine-tuning boost": [], "dissimilar tasks transfer worse": ["dissimilar/seed3/A5B"],
        "random frozen filters": ["random0/seed1/R7B"]}
    header, cells = table(list(found.values()))
    column = {row[0]: row[header.index("includes networks that did not learn")] for row in cells}
    assert column["fine-tuning boost"] == "no" and column["random frozen filters"] == "yes, 1: random0/seed1/R7B"
    assert as_json(list(found.values()))["random frozen filters"]["not_learned"] == ["random0/seed1/R7B"]
    clean = evaluate(not_learning(runs(4), set()), ["random0"], ["dissimilar"])
    assert all(f["not_learned"] == [] for f in clean)
    # the estimates themselves do not change: the networks are marked, not dropped
    assert [f["estimate"] for f in clean] == [f["estimate"] for f in found.values()]

"""The study's findings computed from runs with known effects."""

from __future__ import annotations

import numpy as np

from transferability.findings import evaluate, replicates


def runs(seeds: int, dip: float = -0.01, noise: float = 0.003) -> list[dict]:
    """Rows as report.collect gives them; accuracies with the effects the tests expect."""
    rng = np.random.default_rng(0)
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
                add(split, seed, "BnB+", n, base + 0.01)
                add(split, seed, "AnB", n, base - 0.01 - slope * max(0, n - 3))
                add(split, seed, "AnB+", n, base + 0.015)
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
    assert found["fine-tuning boost"]["verdict"] == "holds"
    assert found["dissimilar tasks transfer worse"]["verdict"] == "holds"
    assert found["random frozen filters"]["verdict"] == "holds"
    assert all(f["estimate"].replicates == 4 for k, f in found.items() if k != "dissimilar tasks transfer worse")


def test_a_real_dip_holds_and_one_replicate_is_inconclusive():
    found = {f["finding"]: f for f in evaluate(runs(4, dip=0.02), ["random0"], [])}
    assert found["fragile co-adaptation"]["verdict"] == "holds"
    assert "dissimilar tasks transfer worse" not in found  # no dissimilar split in the runs
    single = evaluate(runs(1), ["random0"], ["dissimilar"])
    assert {f["verdict"] for f in single} == {"inconclusive"}
    assert all(f["estimate"].low is None for f in single)


def test_both_directions_pool_as_replicates():
    rows = runs(2)
    mirrored = [{**r, "target": "A" if r["target"] == "B" else "B",
                 "family": r["family"].replace("A", "X").replace("B", "A").replace("X", "B")} for r in rows]
    reps = replicates(rows + mirrored)
    assert len([k for k in reps if k[0] == "random0"]) == 4  # 2 seeds x 2 target halves
    found = {f["finding"]: f for f in evaluate(rows + mirrored, ["random0"], ["dissimilar"])}
    assert found["fine-tuning boost"]["estimate"].replicates == 4

"""Minutes against replicates against inconclusive verdicts: the trade-off of a finished run.

Reads a finished run (its networks under data/runs, Snakemake's per-job CPU times under
data/benchmarks) and, for every k, every subset of k of its random units (the dissimilar control
always kept), computes what a run of that subset would have reported: how many findings are
inconclusive, how many n fall outside +-margin in the budget check, and the minutes it would have
taken: the measured set-up plus the measured Snakemake minutes, scaled by the share of the training
CPU time the subset keeps. The README's trade-off table is this script's output on the default run.

    python benchmarks/tradeoff.py --run . --setup-min 2 --snakemake-min 48
"""

from __future__ import annotations

import csv
import os
from itertools import combinations
from pathlib import Path
from statistics import mean
from typing import Any

from common import load_params, parser, save

from transferability.report.page import collect
from transferability.study.findings import budget_check, evaluate


def cpu_seconds(run: Path, split: str, seed: int) -> float:
    """Training CPU time of one unit: every train job's benchmark file of that split and seed."""
    total = 0.0
    for tsv in (run / "data" / "benchmarks" / split / f"seed{seed}").rglob("*.tsv"):
        with tsv.open() as f:
            total += sum(float(row["cpu_time"]) for row in csv.DictReader(f, delimiter="\t"))
    return total


def tradeoff(params: dict[str, Any], run: Path, setup_min: float, snakemake_min: float) -> list[dict[str, Any]]:
    exp, margin = params["experiment"], params["report"]["margin"]
    random_splits = [s for s in exp["splits"] if params["splits"][s]["method"] == "random"] or exp["splits"]
    dissimilar = exp["dissimilar"]["splits"]
    cwd = os.getcwd()
    os.chdir(run)  # the run's paths are relative to its project folder
    try:
        rows = collect(params)
    finally:
        os.chdir(cwd)
    units = [(s, seed) for s in random_splits for seed in exp["seeds"]]
    cpu = {u: cpu_seconds(run, *u) for u in units}
    control = sum(cpu_seconds(run, s, seed) for s in dissimilar for seed in exp["dissimilar"]["seeds"])
    whole = sum(cpu.values()) + control
    ns = tuple(sorted(exp["layers"]))
    out = []
    for k in range(1, len(units) + 1):
        per_subset = []
        for subset in combinations(units, k):
            keep = [r for r in rows if (r["split"], r["seed"]) in subset or r["split"] in dissimilar]
            splits = sorted({s for s, _ in subset})
            found = evaluate(keep, splits, dissimilar, margin, ns)
            check = budget_check(keep, splits, margin, ns)
            per_subset.append({
                "inconclusive": sum(f["verdict"] == "inconclusive" for f in found),
                "outside": 0 if check is None else sum(not e["within_margin"] for e in check["by_n"].values()),
                "minutes": setup_min + snakemake_min * (sum(cpu[u] for u in subset) + control) / whole,
                "networks": len(keep)})
        out.append({"units": k, "subsets": len(per_subset), "networks": per_subset[0]["networks"],
                    "minutes": mean(p["minutes"] for p in per_subset),
                    "inconclusive_mean": mean(p["inconclusive"] for p in per_subset),
                    "inconclusive_max": max(p["inconclusive"] for p in per_subset),
                    "budget_outside_mean": mean(p["outside"] for p in per_subset)})
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| units (replicates) | networks | minutes (est.) | inconclusive verdicts, mean (max) over subsets | "
             "budget check: n outside +-margin, mean |", "|---|---|---|---|---|"]
    lines += [f"| {r['units']} | {r['networks']} | {r['minutes']:.0f} | {r['inconclusive_mean']:.3g} "
              f"({r['inconclusive_max']}) | {r['budget_outside_mean']:.3g} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--run", default=".", help="the finished run's project folder (default: here)")
    p.add_argument("--setup-min", type=float, required=True, help="the run's measured set-up minutes")
    p.add_argument("--snakemake-min", type=float, required=True, help="the run's measured Snakemake minutes")
    args = p.parse_args()
    params = load_params(args.params, False)
    rows = tradeoff(params, Path(args.run).resolve(), args.setup_min, args.snakemake_min)
    print(markdown(rows))
    save("tradeoff", {"rows": rows, "run": str(Path(args.run).resolve())}, params, args)


if __name__ == "__main__":
    main()

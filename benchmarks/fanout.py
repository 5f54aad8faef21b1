"""End to end: the whole default fan-out (prepare to report) at two commits, one after the other.

Each commit is cloned into a temporary folder and run with ``snakemake --cores all`` by the same
tools (this checkout's virtual environment, the package imported from the clone's src/). Prints the
wall time of each, per-rule busy time parsed from Snakemake's log, and whether every network's
accuracy and every embedding accuracy came out identical.

The workload is each clone's ``workflow/params/single.yaml`` (one split, one seed: 37 networks), or its
``params.yaml`` where it has none: before the default grew replicates, that was the same experiment.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from common import ROOT, parser, save, table

EXPERIMENT = ("dataset", "experiment", "model", "train", "evaluate", "features")


def rule_times(log: str) -> dict[str, dict[str, float]]:
    """Per rule: jobs, summed job seconds and the span from its first start to its last finish."""
    stamp, pending, jobs, out = None, None, {}, {}
    for line in log.splitlines():
        if m := re.fullmatch(r"\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]", line.strip()):
            stamp = datetime.strptime(m[1], "%a %b %d %H:%M:%S %Y").timestamp()
        elif m := re.fullmatch(r"(?:local)?rule (\w+):", line.strip()):
            pending = (m[1], stamp)
        elif (m := re.fullmatch(r"jobid: (\d+)", line.strip())) and pending:
            jobs[m[1]], pending = pending, None
        elif (m := re.match(r"Finished jobid: (\d+)", line.strip())) and m[1] in jobs:
            rule, start = jobs.pop(m[1])
            r = out.setdefault(rule, {"jobs": 0, "busy_s": 0.0, "first": start, "last": stamp})
            r["jobs"] += 1
            r["busy_s"] += stamp - start
            r["first"], r["last"] = min(r["first"], start), max(r["last"], stamp)
    return {k: {"jobs": v["jobs"], "busy_s": v["busy_s"], "span_s": v["last"] - v["first"]} for k, v in out.items()}


def accuracies(dest: Path) -> dict[str, Any]:
    nets = {}
    for f in sorted((dest / "data/runs").rglob("metrics.json")):
        m = json.loads(f.read_text())
        nets[str(f.parent.relative_to(dest / "data/runs"))] = {"top1": m["top1"], "top1_kbest": m["top1_kbest"]}
    fne = json.loads((dest / "reports/metrics.json").read_text()).get("random0", {}).get("fne", {})
    tables = {f.name: f.read_text() for f in (dest / "reports/variants.md", dest / "reports/fne.md") if f.exists()}
    return {"networks": nets, "fne": fne, "report_tables": tables}


def leaves(tree: Any, path: str = "") -> dict[str, float]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in leaves(sub, f"{path}.{key}" if path else key).items()}
    return {path: tree} if isinstance(tree, (int, float)) else {}


def run(ref: str, where: Path) -> dict[str, Any]:
    dest = where / ref.replace("/", "_")
    subprocess.run(["git", "clone", "-q", "--shared", str(ROOT), str(dest)], check=True)
    subprocess.run(["git", "-C", str(dest), "checkout", "-q", ref], check=True)
    sha = subprocess.run(["git", "-C", str(dest), "rev-parse", "HEAD"], check=True, capture_output=True,
                         text=True).stdout.strip()
    env = {**os.environ, "PYTHONPATH": str(dest / "src"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    single = dest / "workflow" / "params" / "single.yaml"
    if single.exists() and "extends" in yaml.safe_load(single.read_text()):  # a profile over params.yaml
        subprocess.run(["transferability", "--params", "workflow/params/single.yaml", "resolve", "--out",
                        "params.yaml"], cwd=dest, env=env, check=True)
    elif single.exists():  # a whole params file, before profiles stated only what differs
        (dest / "params.yaml").write_text(single.read_text())
    print(f"{ref} ({sha[:10]}): snakemake --cores all in {dest}", flush=True)
    t = time.perf_counter()
    proc = subprocess.run(["snakemake", "--cores", "all"], cwd=dest, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode:
        sys.exit(f"{ref}: snakemake failed:\n{proc.stderr[-3000:]}")
    params = yaml.safe_load((dest / "params.yaml").read_text())
    experiment = {k: params.get(k) for k in EXPERIMENT}
    experiment["splits"] = {k: params["splits"][k] for k in params["experiment"]["splits"]}  # the ones used
    if not experiment["experiment"].get("dissimilar", {}).get("splits"):  # an empty control is no control
        experiment["experiment"].pop("dissimilar", None)
    return {"ref": ref, "commit": sha, "wall_s": wall, "rules": rule_times(proc.stderr),
            "experiment_params": experiment, **accuracies(dest)}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--before", default="b59466e", help="commit before the performance work (default b59466e)")
    p.add_argument("--after", default="HEAD")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        before, after = run(args.before, Path(tmp)), run(args.after, Path(tmp))
    same_params = before["experiment_params"] == after["experiment_params"]
    same_nets = before["networks"] == after["networks"]
    same_fne = before["fne"] == after["fne"]
    fb, fa = leaves(before["fne"]), leaves(after["fne"])
    fne_diff = 100 * max((abs(fa[k] - fb[k]) for k in fa.keys() & fb.keys()), default=0.0)
    rules = sorted(set(before["rules"]) | set(after["rules"]))
    table(["rule", "jobs", "before busy s", "after busy s", "x"],
          [[r, after["rules"].get(r, {}).get("jobs", 0), before["rules"].get(r, {}).get("busy_s", 0.0),
            after["rules"].get(r, {}).get("busy_s", 0.0),
            before["rules"].get(r, {}).get("busy_s", 0.0) / max(after["rules"].get(r, {}).get("busy_s", 0.0), 1.0)]
           for r in rules])
    speedup = before["wall_s"] / after["wall_s"]
    print(f"whole fan-out: before {before['wall_s']:.0f} s, after {after['wall_s']:.0f} s: {speedup:.2f}x; "
          f"experiment params identical: {same_params}; every network's accuracy identical: {same_nets} "
          f"({len(after['networks'])} networks); embedding accuracies identical: {same_fne} "
          f"(largest difference {fne_diff:.2f} points over {len(fa)} figures)")
    save("fanout", {"before": before, "after": after, "speedup": speedup, "same_params": same_params,
                    "same_network_accuracies": same_nets, "same_embedding_accuracies": same_fne,
                    "embedding_max_diff_points": fne_diff}, None, args)


if __name__ == "__main__":
    main()

"""Convergence ladder: are the params' networks trained to their plateau?

Trains the bases of a few replicates (units: split and seed), and BnB+ at a few n, on a ladder of
budgets (multiples of the params' ``train.epochs``; everything else as the params say), through the
real CLI, a job per core. A base sits on its plateau when doubling its budget moves it by less than
0.3 points; BnB+ (every layer retrained from its own base) then stays within ``report.margin`` of
it, as in the study. Writes the figures to ``benchmarks/results/convergence.json`` and, with
``--docs``, a table and a plot to ``docs/convergence.md`` and ``docs/convergence.png``.

    python benchmarks/convergence.py --docs          # the default params: about 25 minutes on 2 cores
    python benchmarks/convergence.py --set train.batch_size=32 --set train.lr=0.02 --budgets 1 --n
                                                     # one choice of schedule, its bases only
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import mean
from typing import Any

import matplotlib
import yaml
from common import ROOT, load_params, parser, save, table

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from transferability import params as tparams  # noqa: E402
from transferability.files.atomic import atomic_path, write_text  # noqa: E402
from transferability.study.stats import t_interval  # noqa: E402

CLI = [sys.executable, "-m", "transferability.cli"]
PLATEAU = 0.003  # doubling the budget moves a converged base by less than 0.3 points


def run(cmd: list[str], cwd: Path) -> None:
    """One CLI stage with the threads a Snakemake job of these params gets (a job per core runs beside it)."""
    threads = yaml.safe_load((cwd / "params.yaml").read_text())["compute"]["threads"]
    proc = subprocess.run([*CLI, "--threads", str(threads), *cmd], cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{proc.stderr[-2000:]}")


def workspace(root: Path, params: dict[str, Any], epochs: int, units: list[tuple[str, int]], store: Path) -> Path:
    """A project folder whose params train for ``epochs``, sharing one prepared store (data/prepared)."""
    ws = root / f"epochs{epochs}"
    (ws / "data").mkdir(parents=True)
    p = {**params, "train": {**params["train"], "epochs": epochs}}
    (ws / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    (ws / "data" / "prepared").symlink_to(store)
    for split in sorted({s for s, _ in units}):
        run(["split", "--split", split], ws)
    return ws


def result(ws: Path, split: str, seed: int, net: str) -> dict[str, Any]:
    folder = ws / "data" / "runs" / split / f"seed{seed}" / net
    m = json.loads((folder / "metrics.json").read_text())
    t = json.loads((folder / "timing.json").read_text())
    return {"top1_kbest": m["top1_kbest"], "top1": m["top1"], "steps": m["steps"], "wall_time_s": t["wall_time_s"]}


def ladder(params: dict[str, Any], budgets: list[int], units: list[tuple[str, int]], ns: list[int],
           workers: int) -> dict[str, Any]:
    """Every base and BnB+ of every unit at every budget: {epochs: {unit: {network: result}}}."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store_ws = root / "store"
        store_ws.mkdir()
        (store_ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        run(["prepare"], store_ws)
        store = store_ws / "data" / "prepared"
        spaces = {e: workspace(root, params, e, units, store) for e in budgets}
        jobs = [[(e, s, seed, ["train", "--split", s, "--seed", str(seed), "--variant", v] +
                  (["--n", str(n)] if n else []), v if n is None else f"{v}/n{n}")
                 for e in budgets for s, seed in units for v, n in net_list]
                for net_list in ([("baseA", None), ("baseB", None)], [("BnB-ft", n) for n in ns])]
        out: dict[str, Any] = {}

        def one(job: tuple) -> None:
            e, s, seed, cmd, net = job
            run(cmd, spaces[e])
            r = result(spaces[e], s, seed, net)
            out.setdefault(str(e), {}).setdefault(f"{s}/seed{seed}", {})[net] = r
            print(f"{e:>4} epochs  {s} seed {seed}  {net:<10} top-1 {r['top1_kbest']:.4f} "
                  f"({r['wall_time_s']:.0f} s)", flush=True)

        with ThreadPoolExecutor(workers) as pool:
            for phase in jobs:  # bases first: BnB+ copies baseB
                list(pool.map(one, phase))
        return out


def summary(lad: dict[str, Any], ns: list[int]) -> list[dict[str, Any]]:
    """Per budget: the mean over units of each base, of BnB+ - baseB per n, and the move of the bases
    when the budget doubles (against the next rung of the ladder, when it is twice this one)."""
    rows = []
    for e in sorted(lad, key=int):
        units = lad[e].values()
        row = {"epochs": int(e), "steps": next(iter(units))["baseB"]["steps"],
               "baseA": mean(u["baseA"]["top1_kbest"] for u in units),
               "baseB": mean(u["baseB"]["top1_kbest"] for u in units),
               "baseB_final": mean(u["baseB"]["top1"] for u in units),
               "base_s": mean(u[b]["wall_time_s"] for u in units for b in ("baseA", "baseB"))}
        for n in ns:
            row[f"BnB+{n} - baseB"] = mean(u[f"BnB-ft/n{n}"]["top1_kbest"] - u["baseB"]["top1_kbest"] for u in units)
        rows.append(row)
    for row in rows:
        e = str(row["epochs"])
        double = str(2 * row["epochs"])
        moves = [lad[double][u][b]["top1_kbest"] - lad[e][u][b]["top1_kbest"]
                 for u in lad[e] for b in ("baseA", "baseB")] if double in lad else []
        est = t_interval(moves) if moves else None
        row["baseB move when doubled"] = None if double not in lad else \
            mean(lad[double][u]["baseB"]["top1_kbest"] - lad[e][u]["baseB"]["top1_kbest"] for u in lad[e])
        row["bases move when doubled"] = None if est is None else est.mean
        row["bases move ci95"] = None if est is None or est.low is None else [est.low, est.high]
    return rows


def plot(lad: dict[str, Any], rows: list[dict[str, Any]], ns: list[int], path: Path) -> None:
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    budgets = [r["epochs"] for r in rows]
    for unit in next(iter(lad.values())):
        for base, color in (("baseA", "#c0392b"), ("baseB", "#1f4e9c")):
            a.plot(budgets, [lad[str(e)][unit][base]["top1_kbest"] for e in budgets], color=color, alpha=0.35, lw=1)
    a.plot(budgets, [r["baseA"] for r in rows], color="#c0392b", marker="o", lw=2, label="baseA (mean over units)")
    a.plot(budgets, [r["baseB"] for r in rows], color="#1f4e9c", marker="o", lw=2, label="baseB (mean over units)")
    a.plot(budgets, [r["baseB_final"] for r in rows], color="#1f4e9c", ls=":", label="baseB, final evaluation")
    a.set_xscale("log", base=2)
    a.set_xticks(budgets, [str(e) for e in budgets])
    a.set_xlabel("epochs (every network of an experiment trains on one budget)")
    a.set_ylabel("top-1 (mean of the k best evaluations)")
    a.set_title("The bases against the budget (thin: each unit)")
    a.grid(alpha=0.3)
    a.legend(fontsize=8)
    for n in ns:
        b.plot(budgets, [r[f"BnB+{n} - baseB"] for r in rows], marker="o", label=f"BnB+ n = {n}")
    b.axhspan(-0.01, 0.01, color="#dddddd", zorder=0, label="within 0.01 of the base")
    b.axhline(0, color="#555555", lw=1)
    b.set_xscale("log", base=2)
    b.set_xticks(budgets, [str(e) for e in budgets])
    b.set_xlabel("epochs")
    b.set_ylabel("BnB+ - baseB (mean over units)")
    b.set_title("BnB+ beats its own base only while the base is under-trained", fontsize=11)
    b.grid(alpha=0.3)
    b.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def markdown(rows: list[dict[str, Any]], ns: list[int], params: dict[str, Any], units: list, cmd: str,
             png: str = "convergence.png") -> str:
    def f(v: float | None, sign: bool = False) -> str:
        return "" if v is None else f"{v:+.4f}" if sign else f"{v:.4f}"

    tr = params["train"]
    lines = [
        "# Convergence ladder",
        "",
        f"Made by `{cmd}`: the bases of {len(units)} units ({', '.join(f'{s} seed {d}' for s, d in units)}) and "
        f"BnB+ at n = {', '.join(map(str, ns))}, trained on every budget below with the params' schedule "
        f"(batch {tr['batch_size']}, lr {tr['lr']} x {tr['lr_decay']} at {tr['lr_steps']} of the budget, "
        f"{tr['images_per_class']} images per class, {params['model']['arch']} of width "
        f"{params['model'].get('width')}). Top-1 is the study's "
        "metric (mean of the k best evaluations), averaged over the units. A base is on its plateau when doubling "
        f"its budget moves it by less than {PLATEAU * 100:.1f} points.",
        "",
        "| epochs | steps | baseA | baseB | baseB final | bases move when doubled (95% interval) | "
        + " | ".join(f"BnB+ n={n} - baseB" for n in ns) + " | s per base |",
        "|" + "---|" * (7 + len(ns)),
    ]
    for r in rows:
        ci = r["bases move ci95"]
        lines.append(f"| {r['epochs']} | {r['steps']} | {f(r['baseA'])} | {f(r['baseB'])} | {f(r['baseB_final'])} | "
                     f"{f(r['bases move when doubled'], True)}" + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "")
                     + " | "
                     + " | ".join(f(r[f'BnB+{n} - baseB'], True) for n in ns) + f" | {r['base_s']:.0f} |")
    lines += ["", f"![convergence ladder]({png})", ""]
    return "\n".join(lines)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--budgets", nargs="+", type=float, default=[0.25, 0.5, 1, 2],
                   help="multiples of the params' train.epochs (default: 0.25 0.5 1 2)")
    p.add_argument("--units", type=int, default=2, help="units (split, seed) from experiment.splits x seeds")
    p.add_argument("--n", nargs="*", type=int, default=[1, 4, 7], help="BnB+ at these n (none: bases only)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change a params key for this ladder, e.g. train.batch_size=32 (YAML value)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--docs", action="store_true", help="write docs/convergence.md and docs/convergence.png")
    args = p.parse_args()
    params = load_params(args.params, args.quick)
    for item in args.set:
        key, _, value = item.partition("=")
        *path, last = key.split(".")
        section = params
        for k in path:
            section = section[k]
        section[last] = yaml.safe_load(value)
    tparams.validate(params, "--set")
    exp = params["experiment"]
    units = [(s, seed) for seed in exp["seeds"] for s in exp["splits"]][: args.units]
    budgets = sorted({max(1, round(b * params["train"]["epochs"])) for b in args.budgets})
    lad = ladder(params, budgets, units, args.n, args.workers)
    rows = summary(lad, args.n)
    table(["epochs", "steps", "baseA", "baseB", "move x2"] + [f"BnB+{n}-B" for n in args.n] + ["s/base"],
          [[r["epochs"], r["steps"], r["baseA"], r["baseB"], r["bases move when doubled"] or float("nan")]
           + [r[f"BnB+{n} - baseB"] for n in args.n] + [r["base_s"]] for r in rows])
    save("convergence", {"ladder": lad, "summary": rows, "units": units, "n": args.n}, params, args)
    if args.docs:
        default = Path(args.params).resolve() == ROOT / "params.yaml"
        stem = "convergence" if default else f"convergence-{Path(args.params).stem}"  # a profile's beside it
        docs = ROOT / "docs"
        plot(lad, rows, args.n, docs / f"{stem}.png")
        cmd = " ".join(["python benchmarks/convergence.py --docs"] + ([] if default else [
            f"--params {Path(args.params).resolve().relative_to(ROOT)}"]) + [
            f"--budgets {' '.join(f'{b:g}' for b in args.budgets)}", f"--units {args.units}",
            f"--n {' '.join(map(str, args.n))}"])
        write_text(docs / f"{stem}.md", markdown(rows, args.n, params, units, cmd, f"{stem}.png"))
        print(f"-> {docs / f'{stem}.md'}")


if __name__ == "__main__":
    main()

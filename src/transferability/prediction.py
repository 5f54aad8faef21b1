"""Transferability predicted from features alone, held against the measured fan-out.

``estimate`` (one replicate: a split and seed) scores, for every target half the experiment transfers
to (B for AnB, A for BnA), each estimator in ``estimators.methods`` on the source base's layer n for
every n in ``experiment.layers``, from the feature dumps of the target's training images, and times
each one (CPU seconds of this process: core-seconds, whatever the thread count).

``compare`` ranks each replicate's per-n scores against the measured top-1 of the networks they
predict (AnB: layers 1..n copied and frozen; AnB+: fine-tuned) with Kendall's tau and Spearman's rho,
pools the correlations over replicates (split, seed and target half, as findings.py counts them) with
Student's t 95% intervals, and sets each estimator's cost beside the cost of training that fan-out.
LEEP and NCE read the source's classifier, not a layer: they give one score per network, which
cannot rank n, so they are reported as scores only.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from statistics import mean
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from . import estimators, runs
from .atomic import atomic_path, write_json, write_text
from .embedding import columns, fne_accuracy
from .errors import UserError
from .runs import OTHER_HALF, FeatureJob, Network
from .stats import t_interval
from .training import versions

WHOLE_NETWORK = ("leep", "nce")
NAMES = {"logme": "LogME", "leep": "LEEP", "nce": "NCE", "nleep": "N-LEEP", "hscore": "H-score",
         "cka": "linear CKA", "probe": "FNE probe"}
WHAT = {"logme": "max. evidence of a linear model, per image", "leep": "source classifier: log-likelihood of "
        "the expected empirical predictor", "nce": "source classifier: -H(target label given the source's top class)",
        "nleep": "LEEP with a Gaussian mixture on layer n", "hscore": "tr(cov(f)^-1 cov(E[f given y])), shrunk",
        "cka": "layer n of the source base against the target's own base", "probe": "top-1 of the FNE recipe on "
        "layer n (test images)"}
CURVES = {"AnB": "", "AnB-ft": "-ft"}  # measured curve -> variant suffix; both directions pooled (BnA is AnB)
CURVE_NAMES = {"AnB": "AnB (frozen)", "AnB-ft": "AnB+ (fine-tuned)"}


class Dump:
    """One feature dump (features.py), read lazily: a half's dump of ImageNet does not fit in memory twice."""

    def __init__(self, job: FeatureJob) -> None:
        folder = job.dir
        again = (f"run `transferability features --split {job.split} --seed {job.seed} --network {job.network} "
                 f"--target {job.target}`")
        if not all((folder / name).exists() for name in runs.FEATURE_FILES):
            raise UserError(f"no complete feature dump in {folder}: {again}")
        try:
            self.index = json.loads((folder / "index.json").read_text())["layers"]
            self.features = np.load(folder / "features.npy", mmap_mode="r")
            self.logits = np.load(folder / "logits.npy", mmap_mode="r")
            self.labels = np.load(folder / "labels.npy")
            self.is_train = np.load(folder / "is_train.npy")
        except (OSError, ValueError, EOFError, KeyError) as exc:  # truncated or damaged since it was written
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(f"the feature dump in {folder} is unreadable ({reason}): {again}") from exc
        if not len(self.features) == len(self.logits) == len(self.labels) == len(self.is_train):
            raise UserError(f"the feature dump in {folder} has files of different lengths: {again}")

    def layer(self, n: int, rows: np.ndarray) -> np.ndarray:
        """Unit n's columns (the index lists the units in order, whatever the architecture calls them)."""
        return np.asarray(self.features[rows][:, columns(self.index, self.index[n - 1]["layer"])], dtype=np.float32)


def training_rows(dump: Dump, max_images: int | None, seed: int) -> np.ndarray:
    """The target's training images the estimators see: all, or a seeded draw of ``max_images``."""
    rows = np.flatnonzero(dump.is_train)
    if max_images is not None and max_images < len(rows):
        rows = np.sort(np.random.default_rng([seed, max_images]).choice(rows, max_images, replace=False))
    return rows


def timed(fn: Callable[..., float], *args: Any) -> tuple[float, float, float]:
    """(value, CPU seconds of this process, wall seconds): CPU time counts every thread's work."""
    cpu, wall = time.process_time(), time.perf_counter()
    value = fn(*args)
    return float(value), time.process_time() - cpu, time.perf_counter() - wall


def score_direction(params: dict[str, Any], split: str, seed: int, target: str) -> tuple[dict, dict]:
    """Every estimator on the source base's dump on ``target`` (per n where it reads a layer), and its cost.
    Inputs are read from the dumps before the clock starts: a cost is the estimator's arithmetic only."""
    methods, layers = params["estimators"]["methods"], params["experiment"]["layers"]
    source = Dump(FeatureJob(split, seed, f"base{OTHER_HALF[target]}", target))
    own = Dump(FeatureJob(split, seed, f"base{target}", target)) if "cka" in methods else None
    rows = training_rows(source, params["estimators"].get("max_images"), seed)
    test = np.flatnonzero(~source.is_train)
    y, y_test = source.labels[rows], source.labels[test]
    embed = params.get("embed", {})
    probe = (tuple(embed.get("thresholds", ())), embed.get("C"), embed.get("solver", "newton"))
    per_layer: dict[str, tuple[Callable[..., float], Callable[[int], tuple]]] = {
        "logme": (estimators.logme, lambda n: (source.layer(n, rows), y)),
        "nleep": (estimators.nleep, lambda n: (source.layer(n, rows), y, seed)),
        "hscore": (estimators.hscore, lambda n: (source.layer(n, rows), y)),
        "cka": (estimators.linear_cka, lambda n: (source.layer(n, rows), own.layer(n, rows))),
        "probe": (fne_accuracy, lambda n: (source.layer(n, rows), y, source.layer(n, test), y_test, *probe))}
    scores: dict[str, Any] = {}
    cost: dict[str, dict[str, float]] = {}
    for method in methods:
        if method in WHOLE_NETWORK:
            value, cpu, wall = timed(getattr(estimators, method), np.asarray(source.logits[rows]), y)
            scores[method], cost[method] = value, {"cpu_s": cpu, "wall_s": wall}
            continue
        fn, args = per_layer[method]
        values, cpu, wall = [], 0.0, 0.0
        for n in layers:
            value, c, w = timed(fn, *args(n))
            values.append(value)
            cpu, wall = cpu + c, wall + w
        scores[method], cost[method] = values, {"cpu_s": cpu, "wall_s": wall}
    out = {"source_network": f"base{OTHER_HALF[target]}", "images": len(rows), "classes": int(y.max()) + 1,
           "test_images": len(test), "scores": scores}
    return out, {m: {k: round(v, 6) for k, v in c.items()} for m, c in cost.items()}


def estimate(params: dict[str, Any], split: str, seed: int) -> Path:
    """The `estimate` stage: scores.json (numbers only: the same bits from the same dumps) and timing.json."""
    threads = params["compute"]["threads"]
    scores, timing = {}, {}
    with threadpool_limits(threads):
        for target in runs.transfer_targets(params):
            scores[target], timing[target] = score_direction(params, split, seed, target)
            print(f"estimate {split} seed {seed}, {scores[target]['source_network']} on {target}: "
                  + ", ".join(f"{m} {c['cpu_s']:.2f} core-s"
                              for m, c in timing[target].items()), file=sys.stderr)
    dest = runs.estimates_dir(split, seed)
    write_json(dest / "timing.json", {"targets": timing, "threads": threads, "host": platform.node()})
    write_json(dest / "scores.json", {"split": split, "seed": seed, "layers": params["experiment"]["layers"],
                                      "methods": params["estimators"]["methods"], "targets": scores,
                                      "versions": versions()})
    return dest


def _json(path: Path, what: str) -> dict[str, Any]:
    if not path.exists():
        raise UserError(f"{path} is missing: {what}")
    return json.loads(path.read_text())


def measured(params: dict[str, Any], split: str, seed: int, target: str) -> dict[str, dict[str, Any]]:
    """Per curve the experiment trains (AnB, AnB+ towards ``target``): top-1 per n, and what training
    those networks cost (wall seconds x threads, from each run's timing.json)."""
    out = {}
    for curve, suffix in CURVES.items():
        variant = f"{OTHER_HALF[target]}n{target}{suffix}"
        if variant not in params["experiment"]["variants"]:
            continue
        acc, cost = [], 0.0
        for n in params["experiment"]["layers"]:
            net = Network(split, seed, variant, n)
            why = f"train {net.name} ({split}, seed {seed}) first"
            acc.append(_json(net.file("metrics.json"), why)["top1_kbest"])
            timing = _json(net.file("timing.json"), why)
            cost += timing["wall_time_s"] * timing["threads"]
        out[curve] = {"top1_kbest": acc, "core_s": cost}
    return out


def replicates(params: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per (split, seed, target half): scores, their cost, the measured curves and theirs."""
    from scipy.stats import kendalltau, spearmanr

    out = []
    for split in params["experiment"]["splits"]:
        for seed in params["experiment"]["seeds"]:
            folder = runs.estimates_dir(split, seed)
            why = f"run `transferability estimate --split {split} --seed {seed}` first"
            scores, timing = _json(folder / "scores.json", why), _json(folder / "timing.json", why)
            for target, result in scores["targets"].items():
                curves = measured(params, split, seed, target)
                rank: dict[str, dict[str, dict[str, float | None]]] = {}
                for method, values in result["scores"].items():
                    if method in WHOLE_NETWORK:
                        continue
                    rank[method] = {curve: {
                        "kendall": _finite(kendalltau(values, c["top1_kbest"]).statistic),
                        "spearman": _finite(spearmanr(values, c["top1_kbest"]).statistic)}
                        for curve, c in curves.items()}
                out.append({"split": split, "seed": seed, "target": target, **result, "measured": curves,
                            "rank": rank, "cost": timing["targets"][target], "threads": timing["threads"]})
    return out


def _finite(v: float) -> float | None:
    """A rank correlation, or None where it is undefined (a constant score or curve)."""
    return None if not np.isfinite(v) else round(float(v), 6)


def pooled(reps: list[dict[str, Any]], methods: list[str]) -> dict[str, dict[str, Any]]:
    """Per estimator, per measured curve: Kendall and Spearman pooled over replicates (t interval); the
    whole-network scores (LEEP, NCE) pooled as they are."""
    out: dict[str, dict[str, Any]] = {}
    for method in methods:
        if method in WHOLE_NETWORK:
            out[method] = {"score": t_interval([r["scores"][method] for r in reps]).as_dict()}
            continue
        out[method] = {}
        for curve in CURVES:
            for stat in ("kendall", "spearman"):
                vals = [r["rank"][method][curve][stat] for r in reps if curve in r["rank"][method]]
                vals = [v for v in vals if v is not None]
                if vals:
                    out[method].setdefault(curve, {})[stat] = t_interval(vals).as_dict()
    return out


def _ci(entry: dict[str, Any] | None, digits: int = 3) -> str:
    if not entry:
        return ""
    text = f"{entry['mean']:+.{digits}f}"
    return text + (f" [{entry['ci95'][0]:+.{digits}f}, {entry['ci95'][1]:+.{digits}f}]" if entry["ci95"] else "")


def costs(reps: list[dict[str, Any]], methods: list[str]) -> dict[str, float]:
    """Mean core-seconds per replicate of each estimator (every n), and of the fan-outs they predict."""
    out = {m: mean(r["cost"][m]["cpu_s"] for r in reps) for m in methods}
    for curve in CURVES:
        spent = [r["measured"][curve]["core_s"] for r in reps if curve in r["measured"]]
        if spent:
            out[f"fan-out {curve}"] = mean(spent)
    return out


def best(summary: dict[str, dict[str, Any]], curve: str) -> tuple[str, dict[str, Any]] | None:
    """The per-layer estimator with the highest mean Kendall tau against ``curve``."""
    ranked = [(m, s[curve]["kendall"]) for m, s in summary.items() if curve in s and "kendall" in s[curve]]
    return max(ranked, key=lambda ms: ms[1]["mean"]) if ranked else None


def table(summary: dict[str, dict[str, Any]], cost: dict[str, float]) -> tuple[list[str], list[list[str]]]:
    fanout = sum(v for k, v in cost.items() if k.startswith("fan-out"))
    header = ["estimator", "what it scores"] + [f"{stat} vs {CURVE_NAMES[c]}" for c in CURVES
                                                 for stat in ("Kendall tau", "Spearman rho")] + \
        ["replicates", "core-s per replicate", "fan-out / estimator cost"]
    rows = []
    for method, s in summary.items():
        if method in WHOLE_NETWORK:
            cells = [f"one score per network: {_ci(s['score'])}", "", "", ""]
            count = s["score"]["replicates"]
        else:
            cells = [_ci(s.get(c, {}).get(stat)) for c in CURVES for stat in ("kendall", "spearman")]
            count = max((v["replicates"] for c in s.values() for v in c.values()), default=0)
        ratio = f"{fanout / cost[method]:,.0f}x" if cost[method] > 0 and fanout else ""
        rows.append([NAMES[method], WHAT[method], *cells, str(count), f"{cost[method]:.3g}", ratio])
    return header, rows


def figure(reps: list[dict[str, Any]], summary: dict[str, dict[str, Any]], cost: dict[str, float],
           layers: list[int], path: Path) -> None:
    """Left: every per-layer score and the measured curves against n, each scaled to [0, 1] within its
    replicate, then averaged; middle: Kendall's tau with its 95% interval; right: what each costs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def scaled(v: list[float]) -> np.ndarray:
        a = np.asarray(v, dtype=np.float64)
        span = a.max() - a.min()
        return (a - a.min()) / span if span > 0 else np.full_like(a, 0.5)

    per_layer = [m for m in summary if m not in WHOLE_NETWORK]
    colors = dict(zip(per_layer, plt.get_cmap("tab10").colors, strict=False))
    if not reps:
        fig, ax = plt.subplots(figsize=(7, 2))
        ax.text(0.5, 0.5, "no estimators configured (estimators.methods is empty)", ha="center")
        ax.axis("off")
        _save(fig, path)
        return
    fig, axes = plt.subplots(1, 3, figsize=(19, 5.2), gridspec_kw={"width_ratios": [1.3, 1, 1]})
    ax = axes[0]
    for curve, style in zip(CURVES, ("-", "--"), strict=True):
        curves = [scaled(r["measured"][curve]["top1_kbest"]) for r in reps if curve in r["measured"]]
        if curves:
            ax.plot(layers, np.mean(curves, axis=0), color="black", lw=3, ls=style,
                    label=f"measured {CURVE_NAMES[curve]}")
    for m in per_layer:
        ax.plot(layers, np.mean([scaled(r["scores"][m]) for r in reps], axis=0), marker="o", color=colors[m],
                label=NAMES[m])
    ax.set_xlabel("n: layers of the source base (copied, for the measured curves)")
    ax.set_ylabel("scaled to [0, 1] within each replicate, mean")
    ax.set_title(f"Scores against n beside the measured top-1 ({len(reps)} replicates)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[1]
    for i, curve in enumerate(CURVES):
        for j, m in enumerate(per_layer):
            e = summary[m].get(curve, {}).get("kendall")
            if not e:
                continue
            y = j + (i - 0.5) * 0.3
            err = None if not e["ci95"] else [[e["mean"] - e["ci95"][0]], [e["ci95"][1] - e["mean"]]]
            ax.errorbar(e["mean"], y, xerr=err, fmt="o" if i == 0 else "s", color=colors[m], capsize=3,
                        mfc=colors[m] if i == 0 else "white", label=CURVE_NAMES[curve] if j == 0 else None)
    ax.axvline(0, color="#555555", lw=1)
    ax.set_yticks(range(len(per_layer)), [NAMES[m] for m in per_layer])
    ax.set_xlim(-1.05, 1.05)
    ax.set_xlabel("Kendall's tau with the measured top-1 over n (95% interval)")
    ax.set_title("Does the score rank the layers as training does?")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    ax = axes[2]
    names = list(cost)
    ax.barh(range(len(names)), [max(cost[k], 1e-6) for k in names],
            color=[colors.get(k, "#999999") if not k.startswith("fan-out") else "black" for k in names])
    ax.set_xscale("log")
    ax.set_yticks(range(len(names)), [NAMES.get(k, k.replace("-ft", "+")) for k in names])
    ax.set_xlabel("core-seconds per replicate (log scale)")
    ax.set_title("Cost: every n scored, against training the fan-out", fontsize=11)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def load_comparison(out_dir: str | Path = runs.REPORT_DIR) -> dict[str, Any]:
    """What the `estimators` stage wrote, for the report."""
    return _json(Path(out_dir) / "estimators.json", "run `transferability estimators` first")


def compare(params: dict[str, Any], out_dir: str | Path = runs.REPORT_DIR) -> Path:
    """The `estimators` stage: estimators.md (the table and which estimator tracks best), estimators.png, and
    estimators.json, whose ``metrics`` (rank correlations and scores: the same bits from the same runs) the
    report merges into metrics.json; the costs, which differ from run to run, stay out of it."""
    from .tables import markdown

    out = Path(out_dir)
    methods, layers = params["estimators"]["methods"], params["experiment"]["layers"]
    reps = replicates(params)
    summary = pooled(reps, methods) if reps else {}
    cost = costs(reps, methods) if reps else {}
    header, rows = table(summary, cost) if reps else ([], [])
    lines = ["# Transferability estimators against the measured fan-out\n"]
    if reps:
        lines += [f"Every score is computed on the source base's features of the target half's training images "
                  f"({reps[0]['images']} per replicate), per n in {layers} where it reads a layer, and ranked against "
                  "the measured top-1 of the networks that copy layers 1..n (Kendall's tau, Spearman's rho); a "
                  f"replicate is one split, seed and target half ({len(reps)}; both directions pooled, BnA counted as "
                  "AnB), the interval Student's t at 95% over them. Cost: CPU seconds of the estimator's "
                  f"arithmetic (compute.threads = {reps[0]['threads']}), against wall seconds x threads of training "
                  "the fan-out.\n",
                  markdown(header, rows)]
        for curve in CURVES:
            if top := best(summary, curve):
                lines.append(f"Tracks {CURVE_NAMES[curve]} best: **{NAMES[top[0]]}**, Kendall tau {_ci(top[1])} "
                             f"over {top[1]['replicates']} replicate(s).\n")
        fanout = sum(v for k, v in cost.items() if k.startswith("fan-out"))
        lines.append(f"All estimators together cost {sum(cost[m] for m in methods):.2f} core-s per replicate; "
                     f"training the fan-out they predict cost {fanout:.0f} core-s (" + ", ".join(
                         f"{k.removeprefix('fan-out ')} {v:.0f}" for k, v in cost.items() if k.startswith("fan-out"))
                     + ").\n")
    else:
        lines.append("No estimators configured (`estimators.methods` is empty).\n")
    write_text(out / "estimators.md", "\n".join(lines))
    figure(reps, summary, cost, layers, out / "estimators.png")
    dest = out / "estimators.json"
    write_json(dest, {"metrics": summary, "replicates": reps, "cost_core_s": cost,
                      "table": {"header": header, "rows": rows}})
    print(f"estimators: {len(reps)} replicates, {', '.join(methods) or 'none'} -> {out / 'estimators.md'}",
          file=sys.stderr)
    return dest

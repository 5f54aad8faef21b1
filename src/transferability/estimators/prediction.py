"""Transferability predicted from features alone, held against the measured fan-out and against depth.

``estimate`` (one replicate: a split and seed) scores, for every target half the experiment transfers
to (B for AnB, A for BnA), each estimator in ``estimators.methods`` on the source base's layer n for
every n in ``experiment.layers``, from the feature dumps of the target's training images, and times
each one (CPU seconds of this process: core-seconds, whatever the thread count). Where the dumps exist
it scores the target's other sources too (its own base for BnB, the random networks for RnB).

``pooled`` (for the `estimators` stage, estimator_report.compare) ranks each replicate's per-n scores
against the measured top-1 of the networks they predict (AnB: layers 1..n copied and frozen; AnB+:
fine-tuned) with Kendall's tau and Spearman's rho, beside the trivial predictor "score = -n" (depth
alone), and pools per replicate unit as findings.py does: a unit is one (split, seed), its two target
halves (which share both bases) averaged first, a Student's t 95% interval over units; correlations that
are undefined are counted, never hidden. Each estimator's gain over depth (tau - depth's tau, per unit)
says whether it knows more than the layer's depth. Two comparisons depth cannot win: (a) at each n, the
sources a target transfers from (BnB, AnB, RnB) ranked by score against their measured top-1; (b) at
each n, across units, the score against the measured drop AnB(n) - base. LEEP and NCE read the source's
classifier, not a layer: they give one score per network, which cannot rank n, so they are reported as
scores only.
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

from transferability import runs
from transferability.errors import UserError
from transferability.estimators import plan
from transferability.estimators.scores import ESTIMATORS, LAYER, WHOLE_NETWORK, Inputs, own_base_readers
from transferability.features.embedding import columns
from transferability.files.atomic import write_json
from transferability.provenance import versions
from transferability.runs import OTHER_HALF, FeatureJob, Network
from transferability.study.stats import Estimate, t_interval, verdict

NAMES = {name: e.label for name, e in ESTIMATORS.items()}
WHAT = {name: e.what for name, e in ESTIMATORS.items()}
CURVES = {"AnB": "", "AnB-ft": "-ft"}  # measured curve -> variant suffix; both directions pooled (BnA is AnB)
CURVE_NAMES = {"AnB": "AnB (frozen)", "AnB-ft": "AnB+ (fine-tuned)"}
DEPTH = "depth"  # the trivial predictor: score = -n, the deeper the copied layer the worse
ORDER = "order"  # (a)'s trivial predictor: the target's own base first, the other half's next, random filters last
NAMES[DEPTH], WHAT[DEPTH] = "depth alone", "score = -n: the deeper layer n, the worse (the trivial predictor)"
NAMES[ORDER], WHAT[ORDER] = "fixed order", "(a) only: own base first, the other half's next, random filters last"


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
    """Every estimator on the source base's dump on ``target`` (per n where it reads a layer), and its cost;
    then, untimed, the per-layer estimators on the target's other sources whose dumps exist (``sources``).
    Inputs are read from the dumps before the clock starts: a cost is the estimator's arithmetic only."""
    methods, layers = params["estimators"]["methods"], params["experiment"]["layers"]
    source = Dump(FeatureJob(split, seed, f"base{OTHER_HALF[target]}", target))
    own = Dump(FeatureJob(split, seed, f"base{target}", target)) if own_base_readers(methods) else None
    rows = training_rows(source, params["estimators"].get("max_images"), seed)
    test = np.flatnonzero(~source.is_train)
    y, y_test = source.labels[rows], source.labels[test]
    embed = params.get("embed", {})
    probe = (tuple(embed.get("thresholds", ())), embed.get("C"), embed.get("solver", "newton"))
    inputs = Inputs(rows, y, test, y_test, seed, probe, own)
    registry = ESTIMATORS
    scores: dict[str, Any] = {}
    cost: dict[str, dict[str, float]] = {}
    for method in methods:
        est = registry[method]
        values, cpu, wall = [], 0.0, 0.0
        for n in layers if est.reads == LAYER else [None]:
            value, c, w = timed(est.score, *est.args(inputs, source, n))
            values.append(value)
            cpu, wall = cpu + c, wall + w
        scores[method] = values if est.reads == LAYER else values[0]
        cost[method] = {"cpu_s": cpu, "wall_s": wall}
    others = {}
    for variant, nets in plan.other_sources(params, target).items():
        dumps = {net: Dump(FeatureJob(split, seed, net, target)) for net in dict.fromkeys(nets)}
        for dump in dumps.values():
            if not np.array_equal(dump.labels[rows], y):
                raise UserError(f"the feature dumps of {nets[0]} and base{OTHER_HALF[target]} on {target} ({split}, "
                                f"seed {seed}) list other images: run `transferability features` for both again")
        others[variant] = {"networks": nets, "scores": {
            m: [float(registry[m].score(*registry[m].args(inputs, dumps[net], n)))
                for n, net in zip(layers, nets, strict=True)]
            for m in methods if registry[m].reads == LAYER}}
    out = {"source_network": f"base{OTHER_HALF[target]}", "images": len(rows), "classes": int(y.max()) + 1,
           "test_images": len(test), "scores": scores, **({"sources": others} if others else {})}
    return out, {m: {k: round(v, 6) for k, v in c.items()} for m, c in cost.items()}


def estimate(params: dict[str, Any], split: str, seed: int) -> Path:
    """The `estimate` stage: scores.json (numbers only: the same bits from the same dumps) and timing.json."""
    threads = params["compute"]["threads"]
    scores, timing = {}, {}
    with threadpool_limits(threads):
        for target in plan.transfer_targets(params):
            scores[target], timing[target] = score_direction(params, split, seed, target)
            print(f"estimate {split} seed {seed}, {scores[target]['source_network']} on {target}: "
                  + ", ".join(f"{m} {c['cpu_s']:.2f} core-s"
                              for m, c in timing[target].items()), file=sys.stderr)
    dest = plan.estimates_dir(split, seed)
    write_json(dest / "timing.json", {"targets": timing, "threads": threads, "host": platform.node()})
    write_json(dest / "scores.json", {"split": split, "seed": seed, "layers": params["experiment"]["layers"],
                                      "methods": params["estimators"]["methods"], "targets": scores,
                                      "versions": versions()})
    return dest


def _json(path: Path, what: str) -> dict[str, Any]:
    if not path.exists():
        raise UserError(f"{path} is missing: {what}")
    return json.loads(path.read_text())


def top1(params: dict[str, Any], split: str, seed: int, variant: str) -> list[float] | None:
    """Measured top-1 of ``variant`` at every n of experiment.layers (None where the variant is not trained)."""
    if variant not in params["experiment"]["variants"]:
        return None
    return [_json(net.file("metrics.json"), f"train {net.name} ({split}, seed {seed}) first")["top1_kbest"]
            for net in (Network(split, seed, variant, n) for n in params["experiment"]["layers"])]


def measured(params: dict[str, Any], split: str, seed: int, target: str) -> dict[str, dict[str, Any]]:
    """Per curve the experiment trains (AnB, AnB+ towards ``target``): top-1 per n, and what training
    those networks cost (wall seconds x threads, from each run's timing.json)."""
    out = {}
    for curve, suffix in CURVES.items():
        variant = f"{OTHER_HALF[target]}n{target}{suffix}"
        if (acc := top1(params, split, seed, variant)) is None:
            continue
        cost = 0.0
        for n in params["experiment"]["layers"]:
            timing = _json(Network(split, seed, variant, n).file("timing.json"), f"train {variant} n{n} first")
            cost += timing["wall_time_s"] * timing["threads"]
        out[curve] = {"top1_kbest": acc, "core_s": cost}
    return out


def _tau(x: list[float], y: list[float]) -> float | None:
    return _finite(_quiet("kendalltau", x, y).statistic)


def _quiet(name: str, x: list[float], y: list[float]) -> Any:
    """A scipy rank correlation without its warning on constant input: the None it becomes is counted."""
    import warnings

    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return getattr(stats, name)(x, y)


def _checked(scores: dict[str, Any], params: dict[str, Any], path: Path, again: str) -> None:
    """Stored scores pair with the current params' n and methods only if they were scored for them."""
    layers, methods = params["experiment"]["layers"], params["estimators"]["methods"]
    if scores["layers"] != layers:
        raise UserError(f"{path} scored n = {scores['layers']}, but experiment.layers is {layers}: {again} again")
    if missing := [m for m in methods if m not in scores["methods"]]:
        raise UserError(f"{path} has no scores of {', '.join(missing)} (estimators.methods): {again} again")


def ranks(scores: dict[str, Any], curves: dict[str, dict[str, Any]], layers: list[int]
          ) -> dict[str, dict[str, dict[str, float | None]]]:
    """Within one record: each per-layer score's Kendall and Spearman with each measured curve over n, and
    depth alone's (score = -n) beside them."""
    out = {}
    for method, values in [(DEPTH, [-float(n) for n in layers]), *scores.items()]:
        if method not in WHOLE_NETWORK:
            out[method] = {curve: {"kendall": _tau(values, c["top1_kbest"]),
                                   "spearman": _finite(_quiet("spearmanr", values, c["top1_kbest"]).statistic)}
                           for curve, c in curves.items()}
    return out


def replicates(params: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per (split, seed, target half): scores, their cost, the measured curves and theirs, the
    within-record rank correlations (depth's beside the estimators'), and what comparisons (a) and (b) read:
    the other sources' scores with their measured top-1, and the base's top-1."""
    layers, methods = params["experiment"]["layers"], params["estimators"]["methods"]
    out = []
    for split in params["experiment"]["splits"]:
        for seed in params["experiment"]["seeds"]:
            folder = plan.estimates_dir(split, seed)
            why = f"run `transferability estimate --split {split} --seed {seed}`"
            scores = _json(folder / "scores.json", why + " first")
            timing = _json(folder / "timing.json", why + " first")
            _checked(scores, params, folder / "scores.json", why)
            for target, result in scores["targets"].items():
                curves = measured(params, split, seed, target)
                rank = ranks({m: v for m, v in result["scores"].items() if m in methods}, curves, layers)
                sources = {f"{OTHER_HALF[target]}n{target}": {"scores": result["scores"]}}
                sources.update(result.get("sources", {}))
                for variant in sources:
                    sources[variant]["top1_kbest"] = top1(params, split, seed, variant)
                base = Network(split, seed, f"base{target}").file("metrics.json")
                out.append({"split": split, "seed": seed, "target": target, "layers": layers, **result,
                            "measured": curves,
                            "rank": rank, "cost": timing["targets"][target], "threads": timing["threads"],
                            "sources": {v: e for v, e in sources.items() if e["top1_kbest"] is not None},
                            "base_top1": _json(base, f"train base{target} ({split}, seed {seed}) first")["top1_kbest"]})
    return out


def _finite(v: float) -> float | None:
    """A rank correlation, or None where it is undefined (a constant score or curve)."""
    return None if not np.isfinite(v) else round(float(v), 6)


def unit_values(reps: list[dict[str, Any]], value: Callable[[dict[str, Any]], float | None]) -> tuple[list[float], int]:
    """One value per replicate unit (split, seed), as findings.py counts them: the mean over the unit's target
    halves (which share both bases) where ``value`` is defined; and how many records it was undefined in."""
    by_unit: dict[tuple[str, int], list[float]] = {}
    dropped = 0
    for r in reps:
        v = value(r)
        by_unit.setdefault((r["split"], r["seed"]), [])
        if v is None:
            dropped += 1
        else:
            by_unit[(r["split"], r["seed"])].append(v)
    return [mean(vs) for vs in by_unit.values() if vs], dropped


def pool(reps: list[dict[str, Any]], value: Callable[[dict[str, Any]], float | None]) -> dict[str, Any]:
    """``value`` pooled over replicate units: mean, Student's t 95% interval, units counted and records dropped
    (undefined); a mean of None where no unit has a value."""
    values, dropped = unit_values(reps, value)
    est = t_interval(values).as_dict() if values else {"mean": None, "std": None, "ci95": None, "replicates": 0}
    return {**est, "dropped": dropped}


def _get(r: dict[str, Any], method: str, curve: str, stat: str) -> float | None:
    return r["rank"].get(method, {}).get(curve, {}).get(stat)


def _gain(r: dict[str, Any], method: str, curve: str) -> float | None:
    est, dep = _get(r, method, curve, "kendall"), _get(r, DEPTH, curve, "kendall")
    return None if est is None or dep is None else est - dep


def beats(gain: dict[str, Any], what: str = "depth") -> str:
    """'beats <what>' where the gain's interval lies above 0, else 'does not beat <what>' and why."""
    if gain["mean"] is None or gain["ci95"] is None:
        return f"does not beat {what} (no interval: one replicate unit)"
    est = Estimate(gain["mean"], gain["std"], gain["ci95"][0], gain["ci95"][1], gain["replicates"])
    return {"holds": f"beats {what}", "does not hold": f"does not beat {what} ({what} ranks better)",
            "inconclusive": f"does not beat {what} (interval includes 0)"}[verdict(est)]


def _order(variant: str, target: str) -> float:
    """The fixed order's score of a source: own base 3, the other half's 2, random filters 1."""
    return 1.0 if variant.startswith("R") else 3.0 if variant[0] == target else 2.0


def rank_sources(r: dict[str, Any], method: str) -> list[float | None]:
    """Comparison (a) in one record: at each n, Kendall's tau between the sources' scores on their layer n
    (or the fixed order's) and their measured top-1 (None with fewer than two sources, or ties)."""
    srcs = [(v, s) for v, s in r["sources"].items() if method == ORDER or method in s["scores"]]
    if len(srcs) < 2:
        return []
    score = (lambda v, s, i: _order(v, r["target"])) if method == ORDER else (lambda v, s, i: s["scores"][method][i])
    return [_tau([score(v, s, i) for v, s in srcs], [s["top1_kbest"][i] for _, s in srcs])
            for i in range(len(srcs[0][1]["top1_kbest"]))]


def _mean_defined(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return mean(defined) if defined else None


def sources_pooled(reps: list[dict[str, Any]], method: str) -> dict[str, Any] | None:
    """(a) pooled: per record the mean tau over n, per unit over its target halves, t interval over units;
    ``dropped`` counts the (record, n) where the ranking was undefined; for an estimator, its gain over the
    fixed order (tau minus the order's, at the same n) pooled the same way."""
    per = {id(r): rank_sources(r, method) for r in reps}
    if not any(per.values()):
        return None
    out = pool(reps, lambda r: _mean_defined(per[id(r)]))
    out["dropped"] = sum(t is None for v in per.values() for t in v)
    out["sources"] = sorted({v for r in reps for v in r["sources"]})
    if method != ORDER:
        order = {id(r): rank_sources(r, ORDER) for r in reps}
        out["gain_over_order"] = gain = pool(reps, lambda r: _mean_defined(
            [None if a is None or b is None else a - b for a, b in zip(per[id(r)], order[id(r)], strict=True)]))
        gain["verdict"] = beats(gain, "the fixed order")
    return out


def orders_drop(reps: list[dict[str, Any]], method: str, layers: list[int]) -> dict[str, Any] | None:
    """(b): at each n, Kendall's tau across replicate units between the source's score on layer n and the
    measured AnB(n) - base, within each target half (scores on different targets are not comparable), then
    averaged over the target halves; ``p`` is the largest of their exact two-sided p-values."""
    by_n: dict[int, dict[str, Any]] = {}
    for i, n in enumerate(layers):
        taus, ps, units = [], [], 0
        for target in sorted({r["target"] for r in reps}):
            pts = [(r["scores"][method][i], r["measured"]["AnB"]["top1_kbest"][i] - r["base_top1"]) for r in reps
                   if r["target"] == target and "AnB" in r["measured"]]
            units = max(units, len(pts))
            if len(pts) >= 3:
                res = _quiet("kendalltau", *zip(*pts, strict=True))
                if np.isfinite(res.statistic):
                    taus.append(float(res.statistic))
                    ps.append(float(res.pvalue))
        by_n[n] = {"kendall": round(mean(taus), 6) if taus else None, "p": round(max(ps), 6) if ps else None,
                   "replicates": units}
    defined = [e["kendall"] for e in by_n.values() if e["kendall"] is not None]
    if not defined:
        return None
    return {"by_n": by_n, "mean_over_n": round(mean(defined), 6), "positive_n": sum(t > 0 for t in defined),
            "defined_n": len(defined)}


def pooled(reps: list[dict[str, Any]], methods: list[str]) -> dict[str, dict[str, Any]]:
    """Per estimator (and depth alone), per measured curve: Kendall and Spearman pooled over replicate units,
    the gain over depth; the two comparisons depth cannot win (``sources``, ``drop``); the whole-network
    scores (LEEP, NCE) pooled as they are."""
    out: dict[str, dict[str, Any]] = {}
    layers = reps[0]["layers"] if reps else []
    for method in [DEPTH, ORDER, *methods]:
        if method == ORDER:
            if (order := sources_pooled(reps, ORDER)) is not None:
                out[ORDER] = {"sources": order}
            continue
        if method in WHOLE_NETWORK:
            out[method] = {"score": pool(reps, lambda r, m=method: r["scores"][m])}
            continue
        out[method] = {}
        for curve in CURVES:
            if not any(curve in r["rank"].get(method, {}) for r in reps):
                continue
            entry = {stat: pool(reps, lambda r, m=method, c=curve, s=stat: _get(r, m, c, s))
                     for stat in ("kendall", "spearman")}
            if method != DEPTH:
                entry["gain_over_depth"] = gain = pool(reps, lambda r, m=method, c=curve: _gain(r, m, c))
                gain["verdict"] = beats(gain)
            out[method][curve] = entry
        if method != DEPTH:
            if (a := sources_pooled(reps, method)) is not None:
                out[method]["sources"] = a
            if (b := orders_drop(reps, method, layers)) is not None:
                out[method]["drop"] = b
    return out


def costs(reps: list[dict[str, Any]], methods: list[str]) -> dict[str, float]:
    """Mean core-seconds per replicate of each estimator (every n), and of the fan-outs they predict."""
    out = {m: mean(r["cost"][m]["cpu_s"] for r in reps) for m in methods}
    for curve in CURVES:
        spent = [r["measured"][curve]["core_s"] for r in reps if curve in r["measured"]]
        if spent:
            out[f"fan-out {curve}"] = mean(spent)
    return out


def best(summary: dict[str, dict[str, Any]], curve: str) -> tuple[str, dict[str, Any]] | None:
    """The per-layer estimator (depth alone aside) with the highest mean Kendall tau against ``curve``."""
    ranked = [(m, s[curve]["kendall"]) for m, s in summary.items()
              if m != DEPTH and curve in s and s[curve]["kendall"]["mean"] is not None]
    return max(ranked, key=lambda ms: ms[1]["mean"]) if ranked else None


def load_comparison(out_dir: str | Path = runs.REPORT_DIR) -> dict[str, Any]:
    """What the `estimators` stage wrote, for the report."""
    return _json(Path(out_dir) / "estimators.json", "run `transferability estimators` first")

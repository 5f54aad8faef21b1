"""Embedding classifier: our finite Newton SVM against scikit-learn's LinearSVC on the same features.

Both minimise the same objective (one-vs-rest squared hinge, L2, C from params), with the BLAS
threads the embed stage uses (compute.threads); LinearSVC runs as the embed stage ran it before
(liblinear's primal when samples > features, else its dual). Per feature set of the default dump
on half B (FNE, fc6, fc7, each per-layer probe): fit + predict time and test accuracy; then the
whole embed stage's classifiers on every default dump, both ways. This machine's speed drifts by
tens of percent within minutes, so each figure is the median of ``--repeats`` runs after one
untimed warm-up, and the ratio is taken between the medians.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from common import ROOT, load_params, parser, save, table, wall_times
from threadpoolctl import threadpool_limits

from transferability.features.embedding import evaluate_all, fne, l2_normalise, linear_svm, target_splits

SOLVERS = ("liblinear", "newton")


def blocks(repeats: int, run: Callable[[str], Any]) -> dict[str, tuple[float, Any]]:
    """Per solver: the median wall time of ``repeats`` runs after one untimed warm-up, and the last result.

    Each solver is timed in its own block, as the embed stage runs one solver: interleaved with
    liblinear (which copies the data into its own 30 MB sparse problem each fit) the next Newton
    fit measured 0.78 s instead of 0.60 s on the default dump."""
    out = {}
    for solver in SOLVERS:
        result = run(solver)  # the solvers are deterministic: the timed runs give the same
        out[solver] = float(np.median(wall_times(lambda s=solver: run(s), repeats))), result
    return out


def fit_predict(solver: str, c: float, xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray) -> float:
    clf = linear_svm(c, solver, *xtr.shape).fit(xtr.astype(np.float32), ytr)
    return float((clf.predict(xte.astype(np.float32)) == yte).mean())


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--repeats", type=int, default=3, help="runs per solver; figures are medians (default 3)")
    p.add_argument("--threads", type=int, default=None, help="BLAS threads (default: compute.threads, as the stage)")
    p.add_argument("--dumps", default=str(ROOT / "data/features/random0/seed0/baseA"),
                   help="folder of the default run's dumps (one per target), made by `make run`")
    args = p.parse_args()
    params = load_params(args.params, args.quick)
    cfg = params["embed"]
    threadpool_limits(args.threads or params["compute"]["threads"])
    dumps = Path(args.dumps)
    if not (dumps / "B" / "features.npy").exists():
        raise SystemExit(f"no feature dump in {dumps / 'B'}: run `make run` (or the features stage) first")
    x = np.load(dumps / "B" / "features.npy").astype(np.float32)
    y, is_train = np.load(dumps / "B" / "labels.npy"), np.load(dumps / "B" / "is_train.npy")
    layers = json.loads((dumps / "B" / "index.json").read_text())["layers"]
    if args.quick:
        keep = np.concatenate([np.flatnonzero(is_train)[:500], np.flatnonzero(~is_train)[:500]])
        x, y, is_train = x[keep], y[keep], is_train[keep]
    tr, te = np.flatnonzero(is_train), np.flatnonzero(~is_train)
    sets = {"full_network": fne(x[tr], x[te], cfg["thresholds"])}
    for b in cfg["baselines"]:
        cols = next(slice(e["start"], e["stop"]) for e in layers if e["layer"] == b)
        sets[b] = l2_normalise(x[tr][:, cols]), l2_normalise(x[te][:, cols])
    for e in layers:
        sets[f"probe_{e['layer']}"] = fne(x[tr][:, e["start"] : e["stop"]], x[te][:, e["start"] : e["stop"]],
                                          cfg["thresholds"])
    rows, per_set = [], {}
    for name, (ftr, fte) in sets.items():
        res = blocks(args.repeats, lambda s, ftr=ftr, fte=fte: fit_predict(s, cfg["C"], ftr, y[tr], fte, y[te]))
        per_set[name] = {"features": ftr.shape[1], "train_images": len(tr),
                         **{f"{s}_{k}": v for s, (t, a) in res.items() for k, v in (("s", t), ("top1", a))},
                         "speedup": res["liblinear"][0] / res["newton"][0],
                         "top1_diff_points": 100 * (res["newton"][1] - res["liblinear"][1])}
        r = per_set[name]
        rows.append([name, r["features"], r["liblinear_s"], r["newton_s"], r["speedup"], r["liblinear_top1"],
                     r["newton_top1"]])
    table(["features (B)", "cols", "LinearSVC s", "newton s", "speedup", "LinearSVC top-1", "newton top-1"], rows)

    stage = {}
    for target in [] if args.quick else [t for t in params["features"]["targets"] if (dumps / t).exists()]:
        xt = np.load(dumps / target / "features.npy").astype(np.float32)
        yt, it = np.load(dumps / target / "labels.npy"), np.load(dumps / target / "is_train.npy")
        folds = [f for fs in target_splits(target, yt, it, cfg, 0).values() for f in fs]
        res = blocks(args.repeats, lambda s, xt=xt, yt=yt, folds=folds: [
            evaluate_all(xt[a], yt[a], xt[b], yt[b], layers, {**cfg, "solver": s}) for a, b in folds])
        for solver, (seconds, accs) in res.items():
            stage.setdefault(target, {})[solver] = {
                "s": seconds, "classifiers": len(folds) * len(accs[0]),
                "mean_top1": {k: float(np.mean([a[k] for a in accs])) for k in accs[0]}}
        s = stage[target]
        s["speedup"] = s["liblinear"]["s"] / s["newton"]["s"]
        s["max_top1_diff_points"] = 100 * max(abs(s["newton"]["mean_top1"][k] - s["liblinear"]["mean_top1"][k])
                                              for k in s["newton"]["mean_top1"])
    if stage:
        table(["embed stage", "classifiers", "LinearSVC s", "newton s", "speedup", "max |diff| (points)"],
              [[t, s["newton"]["classifiers"], s["liblinear"]["s"], s["newton"]["s"], s["speedup"],
                s["max_top1_diff_points"]] for t, s in stage.items()])
    save("embedding", {"per_feature_set": per_set, "embed_stage": stage, "repeats": args.repeats,
                       "dumps": str(dumps)}, params, args)


if __name__ == "__main__":
    main()

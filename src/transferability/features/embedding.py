"""The Full-Network Embedding (Garcia-Gasulla, Vilalta et al.) and off-the-shelf baselines.

FNE: standardise every feature with the mean and std of the *training* images only, discretise to
{-1, 0, 1} at two thresholds, and train a linear SVM. As the authors' own code (PyPI ``fne``): the
sample std (ddof=1, ``torch.std``), and z <= low gives -1, z > high gives 1 (``torch.bucketize``).
One deliberate difference: a feature with zero std on the training images becomes 0 everywhere;
theirs divides by zero and codes the NaNs and infinities that come out.
Baselines (DeCAF, "CNN features off-the-shelf"): one layer (fc6 or fc7), each vector
L2-normalised, linear SVM. Per-layer probes apply the FNE recipe to one layer's columns.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from transferability.features.svm import LinearSVM


def standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Centre and scale by the training set's mean and sample std (ddof=1, the FNE's own); columns
    with zero std (or a single training row) become 0 everywhere."""
    mean = train.mean(axis=0, dtype=np.float64)
    std = train.std(axis=0, dtype=np.float64, ddof=1) if len(train) > 1 else np.zeros(train.shape[1])
    flat = std == 0
    std[flat] = 1.0
    out = []
    for x in (train, *others):
        z = (x - mean) / std
        z[:, flat] = 0.0
        out.append(z)
    return out


def discretise(z: np.ndarray, low: float = -0.25, high: float = 0.15) -> np.ndarray:
    """-1 at or below ``low``, 1 above ``high``, 0 between (the FNE paper's thresholds by default)."""
    out = np.zeros(z.shape, dtype=np.int8)
    out[z > high] = 1
    out[z <= low] = -1
    return out


def l2_normalise(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm == 0, 1.0, norm)


def fne(train: np.ndarray, test: np.ndarray, thresholds: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    ztr, zte = standardise(train, test)
    return discretise(ztr, *thresholds), discretise(zte, *thresholds)


def linear_svm(c: float, solver: str = "newton", n_samples: int = 0, n_features: int = 0) -> Any:
    """LinearSVC's objective (one-vs-rest squared hinge, L2): our batched Newton solver, or liblinear."""
    if solver == "newton":
        return LinearSVM(C=c)
    from sklearn.svm import LinearSVC

    return LinearSVC(C=c, dual=n_samples < n_features, max_iter=5000)  # liblinear's primal when samples > features


def svm_accuracy(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray, c: float,
                 solver: str = "newton") -> float:
    """Top-1 of a linear SVM trained on (xtr, ytr), tested on (xte, yte)."""
    clf = linear_svm(c, solver, *xtr.shape).fit(xtr.astype(np.float32), ytr)
    return float((clf.predict(xte.astype(np.float32)) == yte).mean())


def fne_accuracy(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray,
                 thresholds: tuple[float, float], c: float, solver: str = "newton") -> float:
    """The FNE recipe (training-set statistics, ternary codes) followed by a linear SVM."""
    ftr, fte = fne(xtr, xte, thresholds)
    return svm_accuracy(ftr, ytr, fte, yte, c, solver)


def columns(index: list[dict[str, Any]], layer: str) -> slice:
    entry = next((e for e in index if e["layer"] == layer), None)
    if entry is None:
        raise KeyError(f"layer {layer} is not in the dump (has {[e['layer'] for e in index]})")
    return slice(entry["start"], entry["stop"])


def evaluate_all(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray,
                 index: list[dict[str, Any]], embed: dict[str, Any]) -> dict[str, float]:
    """Accuracy of the full network, each baseline layer and each per-layer probe on one split."""
    th, c, solver = tuple(embed["thresholds"]), embed["C"], embed.get("solver", "newton")
    out = {"full_network": fne_accuracy(xtr, ytr, xte, yte, th, c, solver)}
    for layer in embed["baselines"]:
        cols = columns(index, layer)
        out[layer] = svm_accuracy(l2_normalise(xtr[:, cols]), ytr, l2_normalise(xte[:, cols]), yte, c, solver)
    if embed.get("probes", True):
        for e in index:
            cols = slice(e["start"], e["stop"])
            out[f"probe_{e['layer']}"] = fne_accuracy(xtr[:, cols], ytr, xte[:, cols], yte, th, c, solver)
    return out


def small_data_splits(labels: np.ndarray, per_class: int | None, test_per_class: int, repeat: int,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One random split: ``test_per_class`` held out per class, ``per_class`` of the rest to train on."""
    rng = np.random.RandomState([seed, repeat])
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test.append(idx[:test_per_class])
        pool = idx[test_per_class:]
        train.append(pool if per_class is None else pool[:per_class])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def target_splits(target: str, labels: np.ndarray, is_train: np.ndarray, embed: dict[str, Any],
                  seed: int) -> dict[int | None, list[tuple[np.ndarray, np.ndarray]]]:
    """Train/test index pairs by training size: digits' random small-data splits, or a half's fixed one."""
    if target != "digits":
        return {None: [(np.flatnonzero(is_train), np.flatnonzero(~is_train))]}
    return {size: [small_data_splits(labels, size, embed.get("test_per_class", 50), r, seed)
                   for r in range(embed.get("repeats", 5))] for size in embed.get("train_sizes", [None])}

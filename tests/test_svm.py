"""The Newton SVM reaches LinearSVC's optimum: same objective value, same predictions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.svm import LinearSVC

from transferability.features.embedding import discretise
from transferability.features.svm import LinearSVM


def objective(coef: np.ndarray, intercept: np.ndarray, x: np.ndarray, labels: np.ndarray, classes: np.ndarray,
              c: float) -> np.ndarray:
    """LinearSVC's primal objective per one-vs-rest problem (the intercept regularised, scaling 1)."""
    out = []
    for k, cls in enumerate(classes):
        y = np.where(labels == cls, 1.0, -1.0)
        w = np.append(coef[k], intercept[k])
        margin = y * (x @ coef[k] + intercept[k])
        out.append(0.5 * w @ w + c * np.sum(np.maximum(0.0, 1.0 - margin) ** 2))
    return np.array(out)


def ternary_problem(n: int, d: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """FNE-like data: class-dependent means, standardised and cut to {-1, 0, 1}."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    x = rng.normal(size=(n, d)) + 0.7 * rng.normal(size=(classes, d))[labels]
    return discretise((x - x.mean(0)) / x.std(0)).astype(np.float32), labels


@pytest.mark.parametrize("n, d, classes, c", [(2000, 120, 5, 1.0),   # samples >> features: Hessian path
                                              (60, 300, 3, 1.0),     # features >> samples: sample space
                                              (400, 300, 4, 0.1),    # both paths within one fit
                                              (500, 40, 2, 10.0)])   # binary, a stiff C
def test_the_optimum_is_liblinears(n, d, classes, c):
    x, y = ternary_problem(n, d, classes, seed=n + d)
    ours = LinearSVM(C=c).fit(x, y)
    ref = LinearSVC(C=c, dual=n < d, tol=1e-8, max_iter=100_000).fit(x, y)
    f_ours = objective(ours.coef_, ours.intercept_, x, y, ours.classes_, c)
    f_ref = objective(ref.coef_.reshape(-1, d) if classes > 2 else np.vstack([-ref.coef_, ref.coef_]),
                      ref.intercept_ if classes > 2 else np.array([-ref.intercept_[0], ref.intercept_[0]]),
                      x, y, ours.classes_, c)
    assert np.all(f_ours <= f_ref * (1 + 1e-6))  # never worse than liblinear at a tight tolerance
    assert np.allclose(f_ours, f_ref, rtol=1e-5)
    xt, yt = ternary_problem(1000, d, classes, seed=n + d)  # same class means: a test set
    assert np.mean(ours.predict(xt) == ref.predict(xt)) >= 0.995


def test_a_perfectly_separable_problem_and_labels_of_any_type():
    x = np.array([[1, 0], [1, 1], [-1, 0], [-1, -1]], dtype=np.float32)
    y = np.array(["cat", "cat", "dog", "dog"])
    clf = LinearSVM(C=1.0).fit(x, y)
    assert list(clf.predict(x)) == list(y)
    assert list(clf.classes_) == ["cat", "dog"]

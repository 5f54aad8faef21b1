"""A linear SVM with LinearSVC's objective, solved for all classes at once by a finite Newton method.

The objective is scikit-learn's ``LinearSVC`` default (liblinear's L2-regularised squared hinge,
one-vs-rest, the intercept a regularised feature of value 1), so the optimum is the same:

    min_w  1/2 |w|^2 + C sum_i max(0, 1 - y_i [x_i, 1] . w)^2     for every class, y_i = +-1.

It is solved as in Keerthi & DeCoste (JMLR 2005, "A modified finite Newton method for fast
solution of large scale linear SVMs"): on the current active set (the samples inside the margin)
the objective is a regularised least-squares problem, solved exactly, then an exact line search
on the piecewise quadratic; it stops after finitely many steps, when the active set no longer
changes. While many samples are active the d x d Hessian is factorised: at w = 0 every sample is
active, so the first one is I + 2C X'X, one product and one factorisation for every class; later
ones add and remove only the samples that entered or left the active set. While fewer than d/2 are
active the step is solved in sample space instead (Woodbury), on the active samples' Gram matrix. Either way
the work is a few BLAS calls per step where liblinear loops over samples in scalar code
(benchmarks/embedding.py measures the difference).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.linalg.blas


def _line_search(w: np.ndarray, d: np.ndarray, o: np.ndarray, z: np.ndarray, y: np.ndarray, c: float,
                 iters: int = 60) -> float:
    """The step t minimising the objective along d, where phi'(t) = 0, by safeguarded Newton.

    phi is a convex piecewise quadratic, so phi' is piecewise linear and non-decreasing: Newton
    steps kept inside a shrinking bracket find its root in a few O(n) evaluations."""
    wd, dd = w @ d, d @ d
    lo, hi, t = 0.0, np.inf, 1.0
    for _ in range(iters):
        m = o + t * z
        act = y * m < 1
        slope = wd + t * dd + 2 * c * ((m[act] - y[act]) @ z[act])
        curv = dd + 2 * c * (z[act] @ z[act])
        if slope < 0:
            lo = t
        elif slope > 0:
            hi = t
        else:
            break
        if hi - lo <= 1e-12 * hi:
            break
        step = t - slope / curv
        t = step if lo < step < hi else (2 * max(t, 1.0) if np.isinf(hi) else (lo + hi) / 2)
    return t


def _woodbury(factor: tuple | None, g: np.ndarray, u32: np.ndarray, s_inv: np.ndarray) -> np.ndarray:
    """(H + U' S U)^-1 g with H given by its Cholesky factor (None: the identity) and S = diag(1 / s_inv)."""
    solve = (lambda b: b) if factor is None else (lambda b: scipy.linalg.cho_solve(factor, b, check_finite=False))
    u = u32.astype(np.float64)
    hg, hu = solve(g), solve(u.T)
    inner = (u32 @ u32.T).astype(np.float64) if factor is None else u @ hu
    inner[np.diag_indices_from(inner)] += s_inv
    # positive definite in sample space (H = I, S > 0); symmetric indefinite when samples also left
    kind = "pos" if factor is None else "sym"
    return hg - hu @ scipy.linalg.solve(inner, u @ hg, assume_a=kind, check_finite=False)


class LinearSVM:
    """One-vs-rest squared-hinge linear SVM: ``fit`` then ``predict``, as scikit-learn's estimators."""

    def __init__(self, C: float = 1.0, tol: float = 1e-7, max_iter: int = 200) -> None:
        self.C, self.tol, self.max_iter = C, tol, max_iter

    def fit(self, x: np.ndarray, labels: np.ndarray) -> LinearSVM:
        self.classes_ = np.unique(labels)
        # Products in float32 (exact for FNE's ternary codes: integer sums below 2**24); the
        # gradient, on which the optimum depends, is accumulated in float64.
        x32 = np.hstack([np.asarray(x, dtype=np.float32), np.ones((len(x), 1), dtype=np.float32)])
        # At w = 0 every sample is active for every class: one Hessian I + 2C X'X, factorised once
        hess = None
        if len(x32) > x32.shape[1] // 2:
            h = np.eye(x32.shape[1]) + 2 * self.C * (x32.T @ x32).astype(np.float64)
            hess = h, scipy.linalg.cho_factor(h, check_finite=False)
        w = np.zeros((x32.shape[1], len(self.classes_)))
        self.n_iter_ = 0
        for k, cls in enumerate(self.classes_):
            y = np.where(labels == cls, 1.0, -1.0)
            w[:, k], iters = self._fit_one(x32, y, hess)
            self.n_iter_ = max(self.n_iter_, iters)
        self.coef_, self.intercept_ = w[:-1].T, w[-1]
        return self

    def _fit_one(self, x32: np.ndarray, y: np.ndarray,
                 hess: tuple[np.ndarray, tuple] | None) -> tuple[np.ndarray, int]:
        c, (n, dim) = self.C, x32.shape
        w, o = np.zeros(dim), np.zeros(n)
        active = np.ones(n, dtype=bool)
        # A factorised Hessian for an earlier active set; steps correct it for the samples that
        # changed since (Woodbury) and refactorise once more than d/8 of them have.
        base_hess, base = (None, None) if hess is None else (hess[0].copy(), hess[1])
        base_active = active.copy()
        g0, full_step = None, False
        for it in range(1, self.max_iter + 1):
            now = y * o < 1
            if full_step and np.array_equal(now, active):  # a full Newton step on the final active set
                return w, it
            active = now
            residual = np.where(active, o - y, 0.0).astype(np.float32)
            grad = w + 2 * c * (residual @ x32).astype(np.float64)  # r'X, not X'r: BLAS's faster gemv here
            gnorm = np.linalg.norm(grad)
            g0 = gnorm if g0 is None else g0
            if gnorm <= self.tol * max(g0, 1e-300):
                return w, it
            diff = active != base_active
            if base_hess is None or active.sum() < dim // 2:  # sample space: I/2C + Xa Xa'
                d = -_woodbury(None, grad, x32[active], np.full(int(active.sum()), 1 / (2 * c)))
            elif not diff.any():
                d = -scipy.linalg.cho_solve(base, grad, check_finite=False)
            elif diff.sum() <= dim // 8:
                d = -_woodbury(base, grad, x32[diff], np.where(active[diff], 1.0, -1.0) / (2 * c))
            else:
                for rows, sign in ((diff & active, 2 * c), (diff & ~active, -2 * c)):  # entered, left
                    if rows.any():
                        u = x32[rows].T  # d x k, Fortran-ordered: BLAS takes it as it is, scaled in the product
                        base_hess += scipy.linalg.blas.sgemm(sign, u, u, trans_b=True).T  # symmetric: read in C order
                base_active, base = active.copy(), scipy.linalg.cho_factor(base_hess, check_finite=False)
                d = -scipy.linalg.cho_solve(base, grad, check_finite=False)
            z = (x32 @ d.astype(np.float32)).astype(np.float64)
            t = _line_search(w, d, o, z, y, c)
            w += t * d
            o += t * z
            full_step = t == 1.0
        return w, self.max_iter

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) @ self.coef_.T + self.intercept_

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.classes_[self.decision_function(x).argmax(1)]

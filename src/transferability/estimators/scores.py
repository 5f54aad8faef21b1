"""Transferability estimators: how well a source network's features suit a target task, without
training on it.

Each takes features of the target's training images (rows) and their target labels 0..C-1, and
returns one number, higher meaning "transfers better":

- ``logme``: LogME (You et al., ICML 2021), the log of the maximum evidence of a Bayesian linear
  model from the features to each one-hot label column, per image, averaged over classes.
- ``leep``: LEEP (Nguyen et al., ICML 2020) from the source classifier's probabilities over its
  own classes; ``nce``: NCE (Tran et al., ICCV 2019), the negative conditional entropy of the target
  label given the source classifier's top class. Both score the whole network, not a layer.
- ``nleep``: N-LEEP (Li et al., CVPR 2021): LEEP with a Gaussian mixture fitted to a layer's
  features standing in for the source classifier, so LEEP can score each layer.
- ``hscore``: H-score (Bao et al., ICIP 2019), tr(cov(f)^-1 cov(E[f | y])), regularised as Ibrahim et al.
  (ICLR 2023) do to remove the raw score's instability: Ledoit-Wolf shrunk cov(f), cov(E[f | y]) x (1 - a).
- ``linear_cka``: linear centred kernel alignment (Kornblith et al., ICML 2019) between two
  representations of the same images; here a source base's layer against the target's own base's.

``ESTIMATORS`` is the registry the pipeline reads (params checks, the dumps a replicate needs, the
`estimate` stage, the tables' labels): one ``Estimator`` per name in ``estimators.methods``, saying
what it reads and how its arguments are built from a feature dump. A new estimator is a function here
and one entry there, plus its name in the schema's enum (test_estimators checks that the two agree).

No well-kept library implements LogME, LEEP, NCE, N-LEEP or H-score (each paper ships a script), so
they are written here from the papers' formulas on numpy, scipy and scikit-learn (softmax, Ledoit-Wolf,
PCA, Gaussian mixtures, Cholesky), in float64.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

LOGME_TOL = 1e-12      # relative change of alpha / beta at which the fixed point has converged
LOGME_MAX_ITER = 10_000
NLEEP_VARIANCE = 0.8   # N-LEEP: PCA keeps this share of the variance (the paper's choice)
NLEEP_PER_CLASS = 5    # N-LEEP: Gaussian components per target class (the paper's choice)


def _onehot(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    return (labels[:, None] == np.arange(labels.max() + 1)).astype(np.float64)


def _spectrum(features: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """The squared singular values s2 (k,) of F above round-off, the targets' coordinates (k, C) along
    F's left singular vectors, and F's width d. From the Gram matrix of the smaller side, so F's n x d
    left factor is never formed (ImageNet: 600k images)."""
    from scipy import linalg  # here, not at import: params checks read the registry without scipy

    f = np.asarray(features, dtype=np.float64)
    n, d = f.shape
    if n >= d:
        s2, v = linalg.eigh(f.T @ f)
        proj = v.T @ (f.T @ targets)        # sigma_i * u_i'y
    else:
        s2, u = linalg.eigh(f @ f.T)
        proj = u.T @ targets                # u_i'y
    keep = s2 > max(s2.max(initial=0.0), 0.0) * max(n, d) * np.finfo(np.float64).eps
    s2 = s2[keep]
    coords = proj[keep] / np.sqrt(s2)[:, None] if n >= d else proj[keep]
    return s2, coords, d


def _max_evidence(s2: np.ndarray, c: np.ndarray, y2: float, n: int, d: int) -> tuple[float, float, float, bool]:
    """Maximise the log evidence of y = F w + noise, w ~ N(0, I / alpha), noise ~ N(0, 1 / beta) over
    (alpha, beta) by MacKay's fixed point, in F's singular basis; return (log evidence / n, alpha, beta,
    whether the fixed point met LOGME_TOL before LOGME_MAX_ITER).

    With A = alpha I + beta F'F (d x d; its d - k null directions contribute log alpha each) and
    m = beta A^-1 F'y, the residual ||F m - y||^2 splits into the part of y inside F's column space,
    sum c_i^2 (t / (t + s_i))^2 with t = alpha / beta, and the part outside it, ||y||^2 - sum c_i^2."""
    c2 = c * c
    outside = max(y2 - c2.sum(), 0.0)
    floor = np.finfo(np.float64).eps * max(y2, np.finfo(np.float64).tiny)  # keeps alpha, beta finite
    alpha = beta = 1.0
    done = False
    for _ in range(LOGME_MAX_ITER):
        t = alpha / beta
        gamma = (s2 / (s2 + t)).sum()
        m2 = max((s2 * c2 / (s2 + t) ** 2).sum(), floor)
        r2 = max((c2 * (t / (s2 + t)) ** 2).sum() + outside, floor)
        # no direction of F above round-off: alpha cancels out of the evidence; keep it
        new_alpha, new_beta = (gamma / m2 if len(s2) else alpha), (n - gamma) / r2
        done = abs(new_alpha - alpha) <= LOGME_TOL * alpha and abs(new_beta - beta) <= LOGME_TOL * beta
        alpha, beta = new_alpha, new_beta
        if done:
            break
    t = alpha / beta
    m2 = max((s2 * c2 / (s2 + t) ** 2).sum(), floor)
    r2 = max((c2 * (t / (s2 + t)) ** 2).sum() + outside, floor)
    log_det = np.log(alpha + beta * s2).sum() + (d - len(s2)) * math.log(alpha)
    evidence = (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - log_det / 2 - beta / 2 * r2
                - alpha / 2 * m2 - n / 2 * math.log(2 * math.pi))
    return evidence / n, alpha, beta, done


@dataclass(frozen=True)
class LogME:
    """A LogME score and what it left out or did not finish: labels in 0..max with no image (a column of
    zeros has no evidence to maximise: its score would be NaN), and classes whose fixed point ran to
    LOGME_MAX_ITER without meeting LOGME_TOL (their evidence is the last iterate's)."""

    score: float
    empty: tuple[int, ...]
    capped: tuple[int, ...]


def logme_fit(features: np.ndarray, labels: np.ndarray) -> LogME:
    """LogME over the classes that have images, with the classes skipped and the classes not converged."""
    y = _onehot(labels)
    present = np.flatnonzero(y.sum(axis=0) > 0)
    empty = tuple(int(c) for c in np.flatnonzero(y.sum(axis=0) == 0))
    y = y[:, present]
    s2, coords, d = _spectrum(features, y)
    n = len(y)
    fits = [_max_evidence(s2, coords[:, j], float(y[:, j] @ y[:, j]), n, d) for j in range(y.shape[1])]
    capped = tuple(int(present[j]) for j, fit in enumerate(fits) if not fit[3])
    return LogME(float(np.mean([fit[0] for fit in fits])), empty, capped)


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME: the maximum log evidence per image of each class's one-hot column, averaged over the classes
    that have images; one line on stderr for classes skipped (no image) or not converged (``logme_fit``).

    Written from the paper's model rather than taken from its script (thuml/LogME): the script's
    evidence leaves out the log alpha of F's null directions (rank-deficient features, e.g. dead
    ReLUs, score differently than their rank-full part) and stops after 11 iterations at a 1e-3
    tolerance; here both are exact to float64."""
    fit = logme_fit(features, labels)
    for line in logme_notes(fit):
        print(line, file=sys.stderr)
    return fit.score


def logme_notes(fit: LogME) -> list[str]:
    """What a LogME score left out or did not finish, one line each (none when it is complete)."""
    out = []
    if fit.empty:
        out.append(f"LogME: skipped label(s) {list(fit.empty)}, which have no image here (the score averages the "
                   "other classes); give every label in 0..max an image (estimators.max_images: null or larger)")
    if fit.capped:
        out.append(f"LogME: class(es) {list(fit.capped)} ran to the {LOGME_MAX_ITER:,}-iteration cap without "
                   f"meeting the tolerance {LOGME_TOL:g}: alpha still growing, as it does without bound where the "
                   "features carry no linear signal for a class; their evidence is the last iterate's")
    return out


def leep_from_probabilities(probs: np.ndarray, labels: np.ndarray) -> float:
    """LEEP: the mean log-likelihood of the target labels under the "expected empirical predictor",
    which maps the source's distribution over its classes z through the empirical P(y | z)."""
    theta = np.asarray(probs, dtype=np.float64)
    y = _onehot(labels)
    joint = y.T @ theta / len(y)                              # P(y, z): C x Z
    cond = joint / np.where(joint.sum(axis=0) > 0, joint.sum(axis=0), 1.0)  # P(y | z)
    return float(np.mean(np.log((theta @ cond.T)[np.arange(len(y)), labels])))


def leep(logits: np.ndarray, labels: np.ndarray) -> float:
    """LEEP from the source classifier's logits (its softmax is the distribution over source classes)."""
    from scipy.special import softmax

    return leep_from_probabilities(softmax(np.asarray(logits, dtype=np.float64), axis=1), labels)


def nce(logits: np.ndarray, labels: np.ndarray) -> float:
    """NCE: -H(Y | Z) with Z the source classifier's top class, from the empirical joint of (y, z)."""
    z = np.asarray(logits).argmax(axis=1)
    labels = np.asarray(labels)
    joint = np.zeros((labels.max() + 1, np.asarray(logits).shape[1]))
    np.add.at(joint, (labels, z), 1.0)
    joint /= len(labels)
    pz = joint.sum(axis=0)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / np.broadcast_to(pz, joint.shape)[nz])).sum())


def nleep(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """N-LEEP: LEEP with the posteriors of a Gaussian mixture (5 components per target class, full
    covariances) on the features' principal components (80% of the variance) as the source's
    distribution; scikit-learn's PCA and GaussianMixture, seeded, so equal inputs give equal scores."""
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    f = np.asarray(features, dtype=np.float64)
    f = f[:, f.std(axis=0) > 0]
    if f.shape[1] == 0:  # a layer that is constant on every image carries no information
        return leep_from_probabilities(np.ones((len(f), 1)), labels)
    reduced = PCA(n_components=NLEEP_VARIANCE, svd_solver="full").fit_transform(f)
    classes = int(np.max(labels)) + 1
    components = min(NLEEP_PER_CLASS * classes, len(f) - 1)
    gmm = GaussianMixture(components, covariance_type="full", reg_covar=1e-6, random_state=seed).fit(reduced)
    return leep_from_probabilities(gmm.predict_proba(reduced), labels)


def hscore(features: np.ndarray, labels: np.ndarray) -> float:
    """The regularised H-score of Ibrahim et al.: (1 - a) sum over classes of P(c) mu_c' S^-1 mu_c
    (= tr(S^-1 (1 - a) cov(E[f | y]))), with class means mu_c of the centred features, S their Ledoit-Wolf
    covariance (scikit-learn) and a its shrinkage. The (1 - a) shrinks the between-class covariance as S
    shrinks the total one, so the score keeps the bound of every H-score, C - 1 (C classes): without it a
    wide, weakly informative layer (much shrinkage) outscores a narrow informative one. Both covariances
    divide by n (the reference script's np.cov divides the between-class one by n - 1, up to n / (n - 1)
    above this score and the bound)."""
    from scipy import linalg
    from sklearn.covariance import ledoit_wolf

    f = np.asarray(features, dtype=np.float64)
    f = f - f.mean(axis=0)
    f = f[:, (f != 0).any(axis=0)]     # constant columns: no variance, no signal
    if f.shape[1] == 0:
        return 0.0
    cov, shrinkage = ledoit_wolf(f, assume_centered=True)
    y = _onehot(labels)
    counts = y.sum(axis=0)
    means = (y.T @ f) / np.where(counts > 0, counts, 1.0)[:, None]   # C x d
    try:
        solved = linalg.cho_solve(linalg.cho_factor(cov), means.T)    # S^-1 mu_c, d x C
    except linalg.LinAlgError:  # no shrinkage (every image's outer product equals S) and S singular
        solved = linalg.pinvh(cov) @ means.T
    return float((1.0 - shrinkage) * ((counts / len(f)) * np.einsum("dc,cd->c", solved, means)).sum())


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two representations of the same n images (n x p, n x q): ||Y'X||_F^2 / (||X'X||_F
    ||Y'Y||_F) on centred columns; 1 for equal representations, and unchanged by orthogonal maps and
    isotropic scaling of either. 0 when either is constant."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    if x.shape[1] > len(x) or y.shape[1] > len(y):  # wider than tall: the n x n Gram matrices are smaller
        kx, ky = x @ x.T, y @ y.T
        cross, nx, ny = (kx * ky).sum(), np.linalg.norm(kx), np.linalg.norm(ky)
    else:
        cross = np.linalg.norm(y.T @ x) ** 2
        nx, ny = np.linalg.norm(x.T @ x), np.linalg.norm(y.T @ y)
    return float(cross / (nx * ny)) if nx > 0 and ny > 0 else 0.0


def probe(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray,
          thresholds: tuple[float, float], c: float, solver: str = "newton") -> float:
    """The FNE probe's top-1 on the test images (embedding.fne_accuracy; imported here, when it is scored)."""
    from transferability.features.embedding import fne_accuracy

    return fne_accuracy(xtr, ytr, xte, yte, thresholds, c, solver)


LAYER, NETWORK = "layer", "network"  # what an estimator reads: layer n's features, or the source's logits


@dataclass(frozen=True)
class Inputs:
    """What a replicate's estimators read besides the dump they score: the target's training rows and their
    labels, its test rows and labels (the probe), the seed, the probe's (thresholds, C, solver) and the
    target's own base's dump (None where no estimator reads it)."""

    rows: np.ndarray
    labels: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray
    seed: int
    probe: tuple[Any, ...]
    own: Any = None


@dataclass(frozen=True)
class Estimator:
    """One estimator as the pipeline knows it: its name in estimators.methods, its label and one line on what
    it measures (the tables), what it reads (``LAYER``: layer n, once per n; ``NETWORK``: the source's
    logits, one score per network, which cannot rank n), whether it reads the target's own base as well
    (its dump is then needed), and ``score(*args(inputs, dump, n))`` (n is None for ``NETWORK``)."""

    name: str
    label: str
    what: str
    reads: str
    score: Callable[..., float]
    args: Callable[[Inputs, Any, int | None], tuple[Any, ...]]
    own_base: bool = False


def _layer(i: Inputs, dump: Any, n: int | None) -> tuple[Any, ...]:
    return dump.layer(n, i.rows), i.labels


def _logits(i: Inputs, dump: Any, n: int | None) -> tuple[Any, ...]:
    return np.asarray(dump.logits[i.rows]), i.labels


ESTIMATORS: dict[str, Estimator] = {e.name: e for e in [
    Estimator("logme", "LogME", "max. evidence of a linear model, per image", LAYER, logme, _layer),
    Estimator("leep", "LEEP", "source classifier: log-likelihood of the expected empirical predictor", NETWORK,
              leep, _logits),
    Estimator("nce", "NCE", "source classifier: -H(target label given the source's top class)", NETWORK,
              nce, _logits),
    Estimator("nleep", "N-LEEP", "LEEP with a Gaussian mixture on layer n", LAYER, nleep,
              lambda i, d, n: (*_layer(i, d, n), i.seed)),
    Estimator("hscore", "H-score", "tr(cov(f)^-1 cov(E[f given y])), shrunk", LAYER, hscore, _layer),
    Estimator("cka", "linear CKA", "layer n of the source base against the target's own base", LAYER, linear_cka,
              lambda i, d, n: (d.layer(n, i.rows), i.own.layer(n, i.rows)), own_base=True),
    Estimator("probe", "FNE probe", "top-1 of the FNE recipe on layer n (test images)", LAYER, probe,
              lambda i, d, n: (d.layer(n, i.rows), i.labels, d.layer(n, i.test), i.test_labels, *i.probe)),
]}
WHOLE_NETWORK = tuple(name for name, e in ESTIMATORS.items() if e.reads == NETWORK)


def own_base_readers(methods: list[str]) -> list[Estimator]:
    """The estimators among ``methods`` that read the target's own base (its dump is then needed)."""
    return [ESTIMATORS[m] for m in methods if ESTIMATORS[m].own_base]

"""The transferability estimators against cases whose answer is known: closed forms, hand-computed
joint distributions, a direct numerical maximisation, and labels with or without structure."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize
from scipy.stats import ortho_group

from transferability.estimators import scores as est
from transferability.features.embedding import fne_accuracy


def direct_log_evidence(f: np.ndarray, y: np.ndarray, log_alpha: float, log_beta: float) -> float:
    """log p(y | F, alpha, beta) / n of the Bayesian linear model, straight from its definition:
    y ~ N(0, I / beta + F F' / alpha)."""
    n = len(y)
    cov = np.eye(n) / math.exp(log_beta) + f @ f.T / math.exp(log_alpha)
    _, logdet = np.linalg.slogdet(cov)
    return float(-(n * math.log(2 * math.pi) + logdet + y @ np.linalg.solve(cov, y)) / 2 / n)


def direct_logme(f: np.ndarray, labels: np.ndarray) -> float:
    """LogME by maximising the evidence over (log alpha, log beta) with scipy, one class at a time."""
    out = []
    for c in range(labels.max() + 1):
        y = (labels == c).astype(np.float64)
        res = optimize.minimize(lambda p, y=y: -direct_log_evidence(f, y, *p), x0=[0.0, 0.0], method="L-BFGS-B",
                                options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10_000})
        out.append(-res.fun)
    return float(np.mean(out))


def clusters(n: int, d: int, classes: int, spread: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    centres = rng.normal(size=(classes, d)) * spread
    return centres[labels] + rng.normal(size=(n, d)), labels


@pytest.mark.parametrize(("n", "d", "dead"), [(120, 6, 0), (120, 6, 3), (15, 40, 0)],
                         ids=["tall", "tall-rank-deficient", "wide"])
def test_logme_is_the_maximum_of_the_evidence(n, d, dead):
    f, labels = clusters(n, d, 3, spread=1.0)
    f = np.hstack([f, np.zeros((n, dead)), f[:, :dead]])  # dead units and duplicated ones: rank < width
    assert est.logme(f, labels) == pytest.approx(direct_logme(f, labels), rel=1e-7)


def test_logme_on_features_that_carry_nothing_is_the_noise_only_evidence():
    labels = np.array([0, 0, 0, 1])
    y2 = np.array([3.0, 1.0])  # ||y||^2 of each class column; the best noise precision is n / ||y||^2
    expected = np.mean([0.5 * math.log(4 / v) - 0.5 - 0.5 * math.log(2 * math.pi) for v in y2])
    assert est.logme(np.zeros((4, 3)), labels) == pytest.approx(expected, rel=1e-12)


def test_logme_ignores_isotropic_scaling_of_the_features():
    f, labels = clusters(200, 5, 4, spread=1.0)
    assert est.logme(1000 * f, labels) == pytest.approx(est.logme(f, labels), rel=1e-9)


THETA = np.array([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.1, 0.9]])  # the source's P(z | x) on 4 images
LABELS = np.array([0, 0, 1, 1])


def test_leep_on_a_hand_computed_joint_distribution():
    # P(y, z) = [[0.35, 0.15], [0.10, 0.40]]; P(z) = [0.45, 0.55]; P(y | z) = [[7/9, 3/11], [2/9, 8/11]];
    # images 1, 4 get 0.8 * 7/9 + 0.2 * 3/11 = 67/99, images 2, 3 get 0.6 * 7/9 + 0.4 * 3/11 = 19/33
    expected = (math.log(67 / 99) + math.log(19 / 33)) / 2
    assert est.leep_from_probabilities(THETA, LABELS) == pytest.approx(expected, rel=1e-12)
    assert est.leep(np.log(THETA) + 5.0, LABELS) == pytest.approx(expected, rel=1e-12)  # logits: any offset


def test_nce_on_a_hand_computed_joint_distribution():
    logits = np.log(THETA)  # top classes z = 0, 0, 1, 1
    assert est.nce(logits, LABELS) == pytest.approx(0.0, abs=1e-15)  # z determines y: no entropy left
    # y = 0, 1, 1, 1: P(y, z) = [[1/4, 0], [1/4, 1/2]], so H(Y | Z) = P(z=0) H(1/2, 1/2) = log(2) / 2
    assert est.nce(logits, np.array([0, 1, 1, 1])) == pytest.approx(-math.log(2) / 2, rel=1e-12)


def test_hscore_of_one_feature_is_its_share_of_between_class_variance():
    f = np.array([[0.0], [2.0], [4.0], [10.0]])
    labels = np.array([0, 0, 1, 1])
    # centred f: -4, -2, 0, 6; class means -3, 3; between-class variance 9, total variance 14
    assert est.hscore(f, labels) == pytest.approx(9 / 14, rel=1e-12)
    assert est.hscore(np.hstack([f, np.ones((4, 1))]), labels) == pytest.approx(9 / 14, rel=1e-12)  # flat column


def test_hscore_of_features_on_one_line_is_that_lines_hscore():
    f = np.array([[1.0, 1.0], [-1.0, -1.0]] * 4)  # Ledoit-Wolf shrinks nothing here: a singular covariance
    labels = np.array([0, 1] * 4)
    assert est.hscore(f, labels) == pytest.approx(est.hscore(f[:, :1] * math.sqrt(2), labels), rel=1e-12)
    assert est.hscore(f, labels) == pytest.approx(1.0, rel=1e-12)  # the classes are the two points


def test_linear_cka_is_one_on_itself_and_invariant_to_rotation_and_scale():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12))
    assert est.linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    q = ortho_group.rvs(12, random_state=2)
    y = np.tanh(x[:, :8] @ rng.normal(size=(8, 6)))  # a nonlinear function of part of x
    reference = est.linear_cka(x, y)
    assert 0.05 < reference < 0.95
    assert est.linear_cka(x @ q, y) == pytest.approx(reference, abs=1e-12)
    assert est.linear_cka(7.5 * x, 0.01 * y) == pytest.approx(reference, abs=1e-12)
    assert est.linear_cka(x + 3.0, y) == pytest.approx(reference, abs=1e-12)  # centred: a shift changes nothing
    wide = rng.normal(size=(20, 50))  # more features than images: the Gram form
    assert est.linear_cka(wide, wide @ ortho_group.rvs(50, random_state=3) * 2) == pytest.approx(1.0, abs=1e-12)


def test_every_estimator_scores_separable_labels_above_shuffled_ones():
    f, labels = clusters(300, 10, 3, spread=2.5)
    shuffled = np.random.default_rng(5).permutation(labels)
    source_logits = 3 * np.eye(4)[labels] + np.random.default_rng(6).normal(size=(300, 4))  # a source that knows
    for name, score in {"logme": est.logme, "hscore": est.hscore, "nleep": est.nleep,
                        "leep": lambda _, y: est.leep(source_logits, y), "nce": lambda _, y: est.nce(source_logits, y),
                        "probe": lambda x, y: fne_accuracy(x[::2], y[::2], x[1::2], y[1::2], (-0.25, 0.15), 1.0)
                        }.items():
        assert score(f, labels) > score(f, shuffled) + 0.1, name
    # CKA compares representations: one that follows the images beats the same rows shuffled
    related = np.maximum(f @ np.random.default_rng(7).normal(size=(10, 6)), 0)
    assert est.linear_cka(f, related) > est.linear_cka(f, related[np.random.default_rng(8).permutation(300)]) + 0.1


def test_estimators_give_the_same_bits_twice():
    f, labels = clusters(200, 8, 3, spread=1.5)
    for score in (est.logme, est.hscore, est.nleep):
        assert score(f, labels) == score(f.copy(), labels.copy())


def test_hscore_keeps_the_bound_c_minus_1_on_wide_weakly_informative_features():
    # 200 images of 10 classes, 512 features each nudged a little by the class: Ledoit-Wolf shrinks a lot, and
    # without the (1 - shrinkage) on the between-class covariance the score passed 30 (bound: 9)
    f, labels = clusters(200, 512, 10, spread=0.3)
    score = est.hscore(f, labels)
    assert 0 < score <= 10 - 1
    narrow, wide = clusters(200, 16, 10, spread=0.8, seed=1)[0], clusters(200, 400, 10, spread=0.25, seed=2)[0]
    assert est.hscore(narrow, labels) > est.hscore(wide, labels)   # the informative layer ranks first
    assert est.hscore(narrow, labels) <= 9 and est.hscore(wide, labels) <= 9


def test_hscore_is_its_published_regularised_form():
    """Against the formula of Ibrahim et al. written out with numpy: tr(pinv(S_a) (1 - a) cov_g), S_a the
    Ledoit-Wolf covariance of shrinkage a, cov_g the covariance of each image's class mean (both over n)."""
    from sklearn.covariance import LedoitWolf

    f, labels = clusters(150, 30, 4, spread=0.5, seed=3)
    centred = f - f.mean(axis=0)
    lw = LedoitWolf(assume_centered=True).fit(centred)
    g = np.stack([centred[labels == c].mean(axis=0) for c in range(4)])[labels]
    expected = np.trace(np.linalg.pinv(lw.covariance_) @ ((1 - lw.shrinkage_) * g.T @ g / len(g)))
    assert 0 < lw.shrinkage_ < 1
    assert est.hscore(f, labels) == pytest.approx(expected, rel=1e-9)


def test_logme_skips_a_label_with_no_image_and_says_so(capsys):
    f, labels = clusters(90, 6, 3, spread=1.0)
    gap = np.where(labels == 2, 3, labels)       # labels 0, 1, 3: label 2 has no image
    score = est.logme(f, gap)
    assert np.isfinite(score)
    assert score == pytest.approx(est.logme(f, labels), rel=1e-12)   # the same classes, renumbered
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "LogME: skipped label(s) [2], which have no image here" in err
    assert est.logme_fit(f, gap).empty == (2,) and est.logme_fit(f, labels).empty == ()


def test_logme_reports_classes_that_reach_the_iteration_cap(capsys):
    rng = np.random.default_rng(0)
    noise, labels = rng.normal(size=(100, 5)), rng.integers(0, 3, 100)   # no signal: alpha grows without bound
    est.logme(noise, labels)
    assert capsys.readouterr().err.splitlines() == [
        "LogME: class(es) [0, 2] ran to the 10,000-iteration cap without meeting the tolerance 1e-12: alpha still "
        "growing, as it does without bound where the features carry no linear signal for a class; their evidence "
        "is the last iterate's"]
    assert est.logme_fit(noise, labels).capped == (0, 2)   # class 1 converges (alpha 333)
    f, informative = clusters(120, 6, 3, spread=2.0)
    assert est.logme_fit(f, informative).capped == ()   # signal in every class: converged, nothing said
    est.logme(f, informative)
    assert capsys.readouterr().err == ""

"""Training health: a network whose loss became NaN or infinite, and one that never learned.

A diverged network stops its job at once (``diverged``: one line naming the network, the step and
what to change); nothing is written for it. A network that trained to the end but never learned
is kept, and marked ``learned: false`` in its metrics.json, so the report can show it and say which
estimates include it. "Never learned" takes both of two signs, each judged on what the run records:

- its training loss never fell below chance level: every evaluation window's mean training loss
  stays above ln C - ``LOSS_TOLERANCE`` (ln C: the cross-entropy of a uniform guess over C classes);
- its top-1 never left chance: no evaluation's top-1 on the test images is above 1/C by a one-sided
  binomial test at ``ALPHA``, Bonferroni-corrected over the run's evaluations.

The tolerance, measured: in the 48-epoch default run, RnB at n = 5 sat at top-1 0.2000 (5 classes)
in 3 of 5 replicates with window means 1.6130, 1.6133, 1.6116, 1.6099, 1.6095, 1.6096 against
ln 5 = 1.6094 (data/runs/random2/seed0/RnB/n5/curve.csv): never below ln C, at most 0.0039 above it,
a spread (sd) of 0.0017 between windows. 0.01 nats is about 6 such sds and 2.5 times the largest
excursion, so a flat curve's window noise never reads as learning. On the default's 2,500 test images
of 5 classes the binomial test calls top-1 0.2240 (560 right) or more "left chance"; the replicates of
that cell which did learn reached 0.40 and 0.50.
"""

from __future__ import annotations

import math
from typing import Any

from transferability.errors import UserError

LOSS_TOLERANCE = 0.01  # nats below ln C that count as "fell below chance" (see the module's docstring)
ALPHA = 0.01  # family-wise, over a run's evaluations (Bonferroni)


def chance_loss(classes: int) -> float:
    """The cross-entropy of a uniform guess over ``classes`` classes: ln C."""
    return math.log(classes)


def loss_fell(evals: list[dict[str, Any]], classes: int) -> bool:
    """Did any evaluation window's mean training loss fall below ln C - LOSS_TOLERANCE?"""
    return any(e["train_loss"] < chance_loss(classes) - LOSS_TOLERANCE for e in evals)


def top1_left_chance(evals: list[dict[str, Any]], num_test: int, classes: int) -> bool:
    """Is the best evaluation's top-1 above 1/C (one-sided binomial test on the test images, at
    ALPHA / number of evaluations)?"""
    from scipy.stats import binomtest

    best = max(e["top1"] for e in evals)
    correct = round(best * num_test)  # top-1 is correct / num_test: the count back, exactly
    return bool(binomtest(correct, num_test, 1 / classes, alternative="greater").pvalue < ALPHA / len(evals))


def learned(evals: list[dict[str, Any]], num_test: int, classes: int) -> bool:
    """False only where the loss never fell below chance and top-1 never left it; True with no evaluations."""
    if not evals:
        return True
    return loss_fell(evals, classes) or top1_left_chance(evals, num_test, classes)


def diverged(label: str, value: float, step: int, total: int, epoch: int, lr: float, base_lr: float) -> UserError:
    """The one line for a non-finite training loss: which network, where, and what to change."""
    return UserError(f"{label}: the training loss became {value} at step {step} of {total} (epoch {epoch + 1}, "
                     f"lr {lr:g}): training diverged; lower train.lr (now {base_lr:g}) and run the stage again")

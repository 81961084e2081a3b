"""The numbers behind the report's curves: plain functions over labels and scores, no drawing.

ROC and precision-recall curves are scikit-learn's; the reliability diagram groups the
encounters into deciles of predicted risk and sets each decile's mean prediction against its
observed readmission rate; per-hospital AUCs score each method on each hospital's own slice of
the pooled hold-out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from common.metrics import compute_metrics
from hefl.holdout import HoldoutScores

#: The reliability diagram's groups: deciles of predicted risk.
CALIBRATION_BINS: Final = 10


@dataclass(frozen=True, eq=False)
class Curve:
    """One method's curve: ``x`` against ``y``."""

    method: str
    x: np.ndarray
    y: np.ndarray


def roc_curves(holdout: HoldoutScores) -> list[Curve]:
    """False positive rate (x) against true positive rate (y), per method."""
    curves = []
    for method in holdout.methods:
        fpr, tpr, _ = roc_curve(holdout.labels, holdout.of(method))
        curves.append(Curve(method, fpr, tpr))
    return curves


def precision_recall_curves(holdout: HoldoutScores) -> list[Curve]:
    """Recall (x) against precision (y), per method."""
    curves = []
    for method in holdout.methods:
        precision, recall, _ = precision_recall_curve(holdout.labels, holdout.of(method))
        curves.append(Curve(method, recall, precision))
    return curves


def reliability(
    method: str, labels: np.ndarray, scores: np.ndarray, bins: int = CALIBRATION_BINS
) -> Curve:
    """Mean predicted risk (x) against observed rate (y) in each quantile group of the scores.

    The encounters are sorted by score and cut into ``bins`` groups of (nearly) equal size;
    fewer encounters than bins give one point per encounter.
    """
    order = np.argsort(scores, kind="stable")
    groups = [g for g in np.array_split(order, min(bins, scores.size)) if g.size]
    predicted = np.array([scores[g].mean() for g in groups])
    observed = np.array([labels[g].mean() for g in groups])
    return Curve(method, predicted, observed)


def reliability_curves(holdout: HoldoutScores, bins: int = CALIBRATION_BINS) -> list[Curve]:
    """The reliability diagram's points of every method."""
    return [reliability(m, holdout.labels, holdout.of(m), bins) for m in holdout.methods]


def hospital_aucs(holdout: HoldoutScores, methods: Sequence[str]) -> dict[str, dict[str, float]]:
    """Each method's AUC on each hospital's test rows; NaN where a hospital's rows hold one
    class (or none), where the AUC is undefined."""
    slices = holdout.slices()
    table: dict[str, dict[str, float]] = {}
    for method in methods:
        scores = holdout.of(method)
        table[method] = {
            name: (
                compute_metrics(holdout.labels[rows], scores[rows]).auc
                if rows.stop > rows.start
                else math.nan
            )
            for name, rows in slices.items()
        }
    return table

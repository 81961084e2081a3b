"""Evaluation metrics of a binary readmission model, as plain data.

Hospitals compute these on their local hold-out and report them in ``UpdateSubmitted``; the
coordinator only relays and summarizes them, so this module needs numpy and scikit-learn but
no TensorFlow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from common.errors import TrainingError

# Probabilities are clipped away from 0 and 1 before taking logs, as Keras does, so that one
# confidently wrong prediction gives a large but finite loss.
LOSS_EPSILON = 1e-7
DECISION_THRESHOLD = 0.5


@dataclass(frozen=True, kw_only=True)
class Metrics:
    """Scores of a model on ``n`` labelled rows.

    ``auc`` is NaN when the rows hold only one class (AUC is undefined there); ``accuracy``
    counts a probability above 0.5 as a positive prediction; ``loss`` is the mean binary
    cross-entropy.
    """

    auc: float
    accuracy: float
    loss: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; NaN becomes ``None`` because strict JSON has no NaN."""
        return {
            "auc": _json_float(self.auc),
            "accuracy": _json_float(self.accuracy),
            "loss": _json_float(self.loss),
            "n": self.n,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Metrics:
        """Inverse of :meth:`to_dict`; raises :class:`TrainingError` on a malformed mapping."""
        try:
            n = data["n"]
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise TypeError(f"n must be a non-negative integer, got {n!r}")
            return cls(
                auc=_parse_float(data["auc"]),
                accuracy=_parse_float(data["accuracy"]),
                loss=_parse_float(data["loss"]),
                n=n,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TrainingError(f"malformed metrics {dict(data)!r}: {exc}") from exc


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _parse_float(value: object) -> float:
    if value is None:
        return float("nan")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number or null, got {value!r}")
    return float(value)


def compute_metrics(y_true: np.ndarray, y_prob: np.ndarray) -> Metrics:
    """Score predicted probabilities against 0/1 labels.

    Raises :class:`TrainingError` when the inputs cannot be scored (empty, different lengths,
    labels other than 0/1, probabilities outside [0, 1] or not finite): a broken evaluation
    must not be reported as a number.
    """
    labels = np.asarray(y_true, dtype=np.float64).reshape(-1)
    probs = np.asarray(y_prob, dtype=np.float64).reshape(-1)
    if labels.size == 0:
        raise TrainingError("cannot compute metrics on zero rows")
    if labels.size != probs.size:
        raise TrainingError(f"{labels.size} labels but {probs.size} predictions")
    if not np.all((labels == 0) | (labels == 1)):
        raise TrainingError("labels must be 0 or 1")
    if not np.all(np.isfinite(probs)) or probs.min() < 0 or probs.max() > 1:
        raise TrainingError("predicted probabilities must be finite and within [0, 1]")

    one_class = np.unique(labels).size < 2
    auc = float("nan") if one_class else float(roc_auc_score(labels, probs))
    accuracy = float(np.mean((probs > DECISION_THRESHOLD) == (labels == 1)))
    clipped = np.clip(probs, LOSS_EPSILON, 1.0 - LOSS_EPSILON)
    loss = float(-np.mean(labels * np.log(clipped) + (1.0 - labels) * np.log1p(-clipped)))
    return Metrics(auc=auc, accuracy=accuracy, loss=loss, n=int(labels.size))

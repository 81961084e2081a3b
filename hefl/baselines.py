"""The baselines a hospital's ML team would try first, trained centrally on the pooled rows.

Logistic regression and gradient boosting from scikit-learn, on the same encoded features and
the same pooled training rows as the centralized MLP; their predicted probabilities are scored
on the pooled hold-out like every other row of the comparison (``hefl.compare``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

LOGISTIC: Final = "logistic regression (pooled data)"
BOOSTING: Final = "gradient boosting (pooled data)"
#: lbfgs on these one-hot and standardized features converges well within this.
MAX_ITER: Final = 2000


@dataclass(frozen=True)
class Baseline:
    """One fitted baseline: its name, its probabilities on the hold-out, its training seconds."""

    method: str
    scores: np.ndarray
    seconds: float


def pooled_baselines(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, *, seed: int
) -> Iterator[Baseline]:
    """Fit each baseline on the pooled training rows and score the hold-out, in turn."""
    models = (
        (LOGISTIC, LogisticRegression(max_iter=MAX_ITER)),
        (BOOSTING, HistGradientBoostingClassifier(random_state=seed)),
    )
    labels = np.asarray(y_train).astype(np.int64)
    for method, model in models:
        started = time.perf_counter()
        model.fit(x_train, labels)
        scores = model.predict_proba(x_test)[:, 1].astype(np.float64)
        yield Baseline(method, scores, time.perf_counter() - started)

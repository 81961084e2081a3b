"""Clinical evaluation of a readmission model: discrimination with its uncertainty, calibration,
and what a ward would see if it acted on the highest-risk patients.

``common.metrics`` holds the few numbers hospitals report every round; this module answers the
questions a clinician asks of a finished model:

- how well does it rank patients (ROC AUC with a 95 % bootstrap percentile interval, average
  precision);
- can its probabilities be read as risks (Brier score, calibration slope and
  calibration-in-the-large);
- if the top ``top_fraction`` of patients by score are flagged for follow-up, what share of the
  readmissions is caught (sensitivity) and how many flags are right (PPV).

The bootstrap is exact (each resample draws ``n`` rows with replacement) but costs O(n) per
resample: scores are grouped into ties once, and a resample's AUC follows from how many
positives and negatives it drew in each tie group (:func:`resampled_aucs`).

Plain functions over numpy arrays; no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Final

import numpy as np
from sklearn.metrics import average_precision_score

from common.errors import ConfigError, TrainingError
from common.fedavg import CLINICAL_METRIC_NAMES, finite

#: The share of patients flagged as highest risk: a typical follow-up capacity.
DEFAULT_TOP_FRACTION: Final = 0.10
#: Resamples behind the AUC interval.
DEFAULT_BOOTSTRAP: Final = 1000
#: Probabilities are clipped to [CLIP, 1 - CLIP] before their logit is taken.
CLIP: Final = 1e-7
#: Drawn rows per bootstrap batch: small enough to stay in cache (measured fastest), whatever n.
_BATCH_CELLS: Final = 1 << 17
_NEWTON_STEPS: Final = 100
_NEWTON_TOLERANCE: Final = 1e-10


@dataclass(frozen=True, kw_only=True)
class ClinicalMetrics:
    """A model's clinical scores on ``rows`` labelled rows, ``positives`` of them positive.

    ``auc`` is the ROC AUC and ``auc_low``..``auc_high`` its 95 % bootstrap percentile interval;
    ``average_precision`` is scikit-learn's; ``brier`` the mean squared error of the
    probabilities. ``calibration_slope`` is ``b`` in the logistic recalibration
    ``y ~ a + b * logit(p)`` (below 1: over-confident) and ``calibration_intercept`` is ``a`` in
    ``y ~ a + logit(p)`` (calibration-in-the-large; above 0: risks underestimated); a
    calibrated model gives 1 and 0. ``threshold`` is the score at or above which a row is
    flagged, so that about ``top_fraction`` of the rows are; ``sensitivity`` is the share of
    positives flagged and ``ppv`` the share of flagged rows that are positive.

    Undefined values are NaN: with one class present the AUC, its interval and the calibration
    fit; average precision without positives; sensitivity without positives; the calibration
    fit also when it has no finite maximum (scores that separate the classes perfectly, or all
    equal for the slope).
    """

    auc: float
    auc_low: float
    auc_high: float
    average_precision: float
    brier: float
    calibration_slope: float
    calibration_intercept: float
    top_fraction: float
    threshold: float
    sensitivity: float
    ppv: float
    rows: int
    positives: int

    def to_dict(self) -> dict[str, float | int | None]:
        """JSON-ready form; non-finite values become ``None`` because strict JSON has no NaN."""
        return {field.name: finite(getattr(self, field.name)) for field in fields(self)}

    def reported(self) -> dict[str, float]:
        """What a hospital's final report carries (``common.fedavg.CLINICAL_METRIC_NAMES``):
        flat floats, NaN where undefined, and no row counts."""
        return {name: float(getattr(self, name)) for name in CLINICAL_METRIC_NAMES}


def checked_top_fraction(value: float) -> float:
    """``value`` as a configured share of patients to flag: strictly between 0 and 1."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise ConfigError(
            f"the top fraction flagged as highest risk must be between 0 and 1 "
            f"(e.g. 0.1 for the top 10%), got {value!r}"
        )
    return float(value)


def clinical_metrics(
    y_true: np.ndarray,
    scores: np.ndarray,
    *,
    top_fraction: float = DEFAULT_TOP_FRACTION,
    bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> ClinicalMetrics:
    """Score predicted probabilities ``scores`` against 0/1 labels ``y_true`` (both 1-D).

    The AUC interval is the 2.5 and 97.5 percentiles of ``bootstrap`` resamples drawn with
    ``np.random.default_rng(seed)`` (NaN with ``bootstrap=0``; resamples holding one class are
    left out). The flagged rows are the ``k = ceil(top_fraction * rows)`` highest-scoring ones
    and every row tied with the k-th: ``threshold`` is the k-th highest score and a row is
    flagged when its score is at or above it, so ties at the threshold are all flagged and
    more than ``k`` rows may be.

    Raises :class:`TrainingError` when the inputs cannot be scored: a broken evaluation must
    not be reported as a number.
    """
    labels, probs = _validated(y_true, scores)
    if isinstance(top_fraction, bool) or not 0 < top_fraction <= 1:
        raise TrainingError(f"top_fraction must be within (0, 1], got {top_fraction!r}")
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int | np.integer) or bootstrap < 0:
        raise TrainingError(f"bootstrap must be a resample count of 0 or more, got {bootstrap!r}")

    rows = labels.size
    positives = int(labels.sum())
    both_classes = 0 < positives < rows
    codes, groups = _tie_codes(labels, probs)
    counts = np.bincount(codes, minlength=2 * groups).reshape(1, 2, groups)
    auc = float(_aucs(counts)[0])

    auc_low = auc_high = math.nan
    if both_classes and bootstrap > 0:
        rng = np.random.default_rng(seed)
        batch = max(1, _BATCH_CELLS // rows)
        aucs = _batched_aucs(
            codes,
            groups,
            (rng.integers(0, rows, (size, rows)) for size in _batches(int(bootstrap), batch)),
        )
        if np.any(np.isfinite(aucs)):
            auc_low, auc_high = (float(v) for v in np.nanpercentile(aucs, [2.5, 97.5]))

    logits = _logit(probs)
    slope = intercept = math.nan
    if both_classes and np.ptp(logits) > 0:
        fit = _logistic_fit(np.column_stack([np.ones(rows), logits]), labels, np.zeros(rows))
        slope = math.nan if fit is None else float(fit[1])
    if both_classes:
        offset_fit = _logistic_fit(np.ones((rows, 1)), labels, logits)
        intercept = math.nan if offset_fit is None else float(offset_fit[0])

    # The relative nudge undoes rounding in the product (0.07 * 100 is 7.000000000000001 in
    # floating point), so that a fraction worth whole rows flags exactly that many.
    flagged_count = min(rows, max(1, math.ceil(top_fraction * rows * (1 - 1e-12))))
    threshold = float(np.partition(probs, rows - flagged_count)[rows - flagged_count])
    flagged = probs >= threshold
    caught = float(labels[flagged].sum())
    return ClinicalMetrics(
        auc=auc,
        auc_low=auc_low,
        auc_high=auc_high,
        average_precision=(
            float(average_precision_score(labels.astype(np.int64), probs))
            if positives > 0
            else math.nan
        ),
        brier=float(np.mean((probs - labels) ** 2)),
        calibration_slope=slope,
        calibration_intercept=intercept,
        top_fraction=float(top_fraction),
        threshold=threshold,
        sensitivity=caught / positives if positives > 0 else math.nan,
        ppv=caught / float(flagged.sum()),
        rows=rows,
        positives=positives,
    )


def resampled_aucs(y_true: np.ndarray, scores: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """The ROC AUC of each resample: row ``b`` of ``indices`` lists the rows resample ``b`` drew.

    Each AUC equals ``roc_auc_score(y_true[indices[b]], scores[indices[b]])`` (ties count one
    half); a resample holding one class gets NaN. This is the bootstrap of
    :func:`clinical_metrics`, open to a caller that draws its own resamples.
    """
    labels, probs = _validated(y_true, scores)
    draws = np.asarray(indices)
    if draws.ndim != 2 or not np.issubdtype(draws.dtype, np.integer):
        raise TrainingError(f"indices must be a 2-D integer array, got {draws.dtype} {draws.shape}")
    if draws.size and (draws.min() < 0 or draws.max() >= labels.size):
        raise TrainingError(f"indices must lie within [0, {labels.size}), the rows given")
    codes, groups = _tie_codes(labels, probs)
    batch = max(1, _BATCH_CELLS // max(1, draws.shape[1]))
    starts = range(0, draws.shape[0], batch)
    return _batched_aucs(codes, groups, (draws[start : start + batch] for start in starts))


def _validated(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    try:
        labels = np.asarray(y_true, dtype=np.float64)
        probs = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TrainingError(f"y_true and scores must be numeric arrays: {exc}") from exc
    for name, values in (("y_true", labels), ("scores", probs)):
        if values.ndim != 1:
            raise TrainingError(f"{name} must be 1-D, got shape {values.shape}")
    if labels.size != probs.size:
        raise TrainingError(
            f"y_true and scores differ in length: {labels.size} labels, {probs.size} scores"
        )
    if labels.size == 0:
        raise TrainingError("cannot compute clinical metrics on empty input (zero rows)")
    wrong = labels[(labels != 0) & (labels != 1)]
    if wrong.size:
        raise TrainingError(f"labels must be 0 or 1, {wrong.size} are not (e.g. {wrong[0]})")
    bad = np.flatnonzero(~np.isfinite(probs))
    if bad.size:
        raise TrainingError(f"scores must be finite, {bad.size} are not (first at row {bad[0]})")
    if probs.min() < 0 or probs.max() > 1:
        raise TrainingError(
            f"scores must be probabilities within [0, 1], found {probs.min()}..{probs.max()}"
        )
    return labels, probs


def _tie_codes(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, int]:
    """Per row, ``label * groups + rank of its score among the distinct ones``; ``groups``, the
    number of distinct scores."""
    distinct, rank = np.unique(probs, return_inverse=True)
    return labels.astype(np.intp) * distinct.size + rank.reshape(-1), int(distinct.size)


def _batched_aucs(codes: np.ndarray, groups: int, batches: Iterator[np.ndarray]) -> np.ndarray:
    """The AUC of each resample, resamples coming in batches of drawn row indices."""
    aucs = []
    # A plain loop keeps each batch alive until the next one is drawn: measured 2-3x faster
    # than a comprehension that frees each batch at once (the allocator returns and refaults
    # the pages every time).
    for draws in batches:
        counts = _resample_counts(codes, groups, draws)
        aucs.append(_aucs(counts))
    return np.concatenate(aucs) if aucs else np.empty(0)


def _resample_counts(codes: np.ndarray, groups: int, draws: np.ndarray) -> np.ndarray:
    """Shape (resamples, 2, groups): how many negatives and positives each drew per tie group."""
    size = draws.shape[0]
    offsets = (np.arange(size, dtype=np.intp) * (2 * groups))[:, None]
    flat = (codes[draws] + offsets).reshape(-1)
    return np.bincount(flat, minlength=size * 2 * groups).reshape(size, 2, groups)


def _aucs(counts: np.ndarray) -> np.ndarray:
    """AUC per resample from its counts: each positive beats the negatives scored below it
    and half of those tied with it (the Mann-Whitney statistic); NaN without both classes."""
    negatives, positives = counts[:, 0], counts[:, 1]
    # Twice the wins, in integers (exact): 2 * (negatives at or below) - negatives tied.
    wins2 = 2 * np.einsum("ij,ij->i", positives, np.cumsum(negatives, axis=1)) - np.einsum(
        "ij,ij->i", positives, negatives
    )
    pairs = positives.sum(axis=1) * negatives.sum(axis=1)
    return np.where(pairs > 0, wins2 / (2.0 * np.maximum(pairs, 1)), np.nan)


def _batches(total: int, size: int) -> list[int]:
    return [min(size, total - start) for start in range(0, total, size)]


def _logit(probs: np.ndarray) -> np.ndarray:
    clipped = np.clip(probs, CLIP, 1.0 - CLIP)
    return np.log(clipped) - np.log1p(-clipped)


def _log_likelihood(eta: np.ndarray, labels: np.ndarray) -> float:
    return float(np.sum(labels * eta - np.logaddexp(0.0, eta)))


def _logistic_fit(design: np.ndarray, labels: np.ndarray, offset: np.ndarray) -> np.ndarray | None:
    """Unpenalised maximum likelihood of ``beta`` in ``y ~ Bernoulli(sigmoid(offset + X beta))``
    by Newton-Raphson with step halving; ``None`` when there is no finite maximum (the Hessian
    is singular, or the steps do not shrink: separated classes)."""
    beta = np.zeros(design.shape[1])
    eta = offset.copy()
    current = _log_likelihood(eta, labels)
    for _ in range(_NEWTON_STEPS):
        fitted = np.exp(-np.logaddexp(0.0, -eta))
        gradient = design.T @ (labels - fitted)
        hessian = (design * (fitted * (1.0 - fitted))[:, None]).T @ design
        try:
            step = np.linalg.solve(hessian, gradient)
        except np.linalg.LinAlgError:
            return None
        if not np.all(np.isfinite(step)):
            return None
        if np.max(np.abs(step)) < _NEWTON_TOLERANCE:
            return beta + step
        for _ in range(40):
            trial_eta = offset + design @ (beta + step)
            trial = _log_likelihood(trial_eta, labels)
            if trial >= current:
                break
            step = step / 2
        else:
            return beta
        beta, eta, current = beta + step, trial_eta, trial
    return None

"""Tests of the clinical evaluation: AUC and its bootstrap interval, calibration, top-risk flags."""

from __future__ import annotations

import json
import math
from dataclasses import fields

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from common.clinical import (
    DEFAULT_BOOTSTRAP,
    DEFAULT_TOP_FRACTION,
    ClinicalMetrics,
    clinical_metrics,
    resampled_aucs,
)
from common.errors import TrainingError


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def calibrated(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from the very risks the scores state: a perfectly calibrated model."""
    rng = np.random.default_rng(seed)
    risk = sigmoid(rng.normal(-1.5, 1.2, rows))
    return (rng.random(rows) < risk).astype(np.int64), risk


def delong_se(labels: np.ndarray, scores: np.ndarray) -> float:
    """DeLong's standard error of the AUC (ties count one half)."""
    pos = np.sort(scores[labels == 1])
    neg = np.sort(scores[labels == 0])
    below_pos = np.searchsorted(neg, pos, side="left")
    tied_pos = np.searchsorted(neg, pos, side="right") - below_pos
    v10 = (below_pos + 0.5 * tied_pos) / neg.size
    above_neg = pos.size - np.searchsorted(pos, neg, side="right")
    tied_neg = np.searchsorted(pos, neg, side="right") - np.searchsorted(pos, neg, side="left")
    v01 = (above_neg + 0.5 * tied_neg) / pos.size
    return math.sqrt(v10.var(ddof=1) / pos.size + v01.var(ddof=1) / neg.size)


def test_defaults_are_a_tenth_flagged_and_a_thousand_resamples() -> None:
    assert DEFAULT_TOP_FRACTION == 0.10
    assert DEFAULT_BOOTSTRAP == 1000


@pytest.mark.parametrize(("seed", "decimals"), [(0, 1), (1, 2), (2, 3), (3, 12)])
def test_point_auc_and_average_precision_equal_scikit_learns_with_ties(
    seed: int, decimals: int
) -> None:
    labels, risk = calibrated(3000, seed)
    scores = np.round(risk, decimals)
    assert np.unique(scores).size < scores.size or decimals == 12
    result = clinical_metrics(labels, scores, bootstrap=0)
    assert abs(result.auc - roc_auc_score(labels, scores)) < 1e-12
    assert abs(result.average_precision - average_precision_score(labels, scores)) < 1e-12


def test_brier_equals_scikit_learns_brier_score_loss() -> None:
    labels, risk = calibrated(5000, seed=4)
    result = clinical_metrics(labels, risk, bootstrap=0)
    assert result.brier == pytest.approx(brier_score_loss(labels, risk), abs=1e-15)
    assert result.rows == 5000
    assert result.positives == int(labels.sum())


def test_a_calibrated_model_has_slope_one_and_intercept_zero() -> None:
    labels, risk = calibrated(200_000, seed=5)
    result = clinical_metrics(labels, risk, bootstrap=0)
    assert abs(result.calibration_slope - 1.0) < 0.05
    assert abs(result.calibration_intercept) < 0.05


def test_over_confident_scores_have_slope_near_one_half() -> None:
    labels, risk = calibrated(200_000, seed=6)
    result = clinical_metrics(labels, sigmoid(2.0 * logit(risk)), bootstrap=0)
    assert abs(result.calibration_slope - 0.5) < 0.03


def test_underestimated_risks_show_as_a_positive_intercept() -> None:
    labels, risk = calibrated(200_000, seed=7)
    result = clinical_metrics(labels, sigmoid(logit(risk) - 0.5), bootstrap=0)
    assert abs(result.calibration_intercept - 0.5) < 0.05
    assert abs(result.calibration_slope - 1.0) < 0.05


def test_calibration_fit_matches_scikit_learns_unpenalised_logistic_regression() -> None:
    from sklearn.linear_model import LogisticRegression

    labels, risk = calibrated(20_000, seed=8)
    scores = sigmoid(1.7 * logit(risk) + 0.3)
    reference = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000)
    reference.fit(logit(scores).reshape(-1, 1), labels)
    result = clinical_metrics(labels, scores, bootstrap=0)
    assert result.calibration_slope == pytest.approx(reference.coef_[0, 0], abs=1e-5)


def test_scores_that_separate_the_classes_have_no_slope_but_an_intercept() -> None:
    labels = np.array([0] * 50 + [1] * 50)
    scores = np.linspace(0.05, 0.95, 100)
    result = clinical_metrics(labels, scores, bootstrap=0)
    assert result.auc == 1.0
    assert math.isnan(result.calibration_slope)
    assert math.isfinite(result.calibration_intercept)


def test_constant_scores_have_no_slope_and_the_intercept_of_the_base_rate() -> None:
    labels = np.array([1] * 30 + [0] * 70)
    result = clinical_metrics(labels, np.full(100, 0.2), bootstrap=0)
    assert math.isnan(result.calibration_slope)
    expected = math.log(0.3 / 0.7) - math.log(0.2 / 0.8)
    assert result.calibration_intercept == pytest.approx(expected, abs=1e-8)
    assert result.auc == 0.5


def test_resampled_aucs_equal_scikit_learn_on_the_same_resamples() -> None:
    labels, risk = calibrated(300, seed=9)
    scores = np.round(risk, 2)
    indices = np.random.default_rng(10).integers(0, 300, (200, 300))
    fast = resampled_aucs(labels, scores, indices)
    slow = np.array([roc_auc_score(labels[i], scores[i]) for i in indices])
    assert fast.shape == (200,)
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-9)


def test_a_resample_holding_one_class_has_no_auc() -> None:
    labels = np.array([0, 1, 0, 1])
    scores = np.array([0.1, 0.9, 0.2, 0.3])
    aucs = resampled_aucs(labels, scores, np.array([[0, 2, 2, 0], [0, 1, 2, 3]]))
    assert math.isnan(aucs[0])
    assert aucs[1] == 1.0


def test_resample_indices_outside_the_rows_are_refused() -> None:
    with pytest.raises(TrainingError, match="indices"):
        resampled_aucs(np.array([0, 1]), np.array([0.2, 0.8]), np.array([[0, 2]]))


def test_the_interval_contains_the_point_auc_and_narrows_with_more_rows() -> None:
    small = clinical_metrics(*calibrated(500, seed=11), bootstrap=500)
    large = clinical_metrics(*calibrated(20_000, seed=11), bootstrap=500)
    for result in (small, large):
        assert result.auc_low < result.auc < result.auc_high
    assert large.auc_high - large.auc_low < (small.auc_high - small.auc_low) / 3


def test_the_interval_is_deterministic_for_a_seed() -> None:
    labels, risk = calibrated(2000, seed=12)
    first = clinical_metrics(labels, risk, bootstrap=300, seed=3)
    again = clinical_metrics(labels, risk, bootstrap=300, seed=3)
    other = clinical_metrics(labels, risk, bootstrap=300, seed=4)
    assert (first.auc_low, first.auc_high) == (again.auc_low, again.auc_high)
    assert (first.auc_low, first.auc_high) != (other.auc_low, other.auc_high)


def test_the_interval_width_matches_delongs_standard_error() -> None:
    labels, risk = calibrated(20_000, seed=13)
    result = clinical_metrics(labels, risk, bootstrap=1000)
    expected = 3.92 * delong_se(labels, risk)
    assert abs((result.auc_high - result.auc_low) / expected - 1.0) < 0.25


def test_no_resamples_give_no_interval() -> None:
    result = clinical_metrics(*calibrated(1000, seed=14), bootstrap=0)
    assert math.isfinite(result.auc)
    assert math.isnan(result.auc_low)
    assert math.isnan(result.auc_high)


def test_the_top_tenth_is_flagged_with_hand_computed_sensitivity_and_ppv() -> None:
    scores = np.arange(100) / 99
    labels = np.zeros(100, dtype=np.int64)
    labels[[3, 50, 91, 95, 97, 99]] = 1
    result = clinical_metrics(labels, scores, bootstrap=0)
    assert result.top_fraction == 0.10
    assert result.threshold == 90 / 99
    assert result.sensitivity == 4 / 6
    assert result.ppv == 4 / 10


def test_every_row_tied_at_the_threshold_is_flagged() -> None:
    scores = np.concatenate([np.full(5, 0.9), np.linspace(0.1, 0.5, 15)])
    labels = np.array([1, 1, 0, 0, 0] + [1] * 3 + [0] * 12)
    result = clinical_metrics(labels, scores, top_fraction=0.10, bootstrap=0)
    assert result.threshold == 0.9
    assert result.ppv == 2 / 5
    assert result.sensitivity == 2 / 5


@pytest.mark.parametrize("fraction", [0.07, 0.1, 0.25, 0.5, 1.0])
def test_distinct_scores_flag_the_requested_share_at_the_higher_quantile(fraction: float) -> None:
    scores = np.random.default_rng(16).random(1000)
    labels = np.ones(1000, dtype=np.int64)
    result = clinical_metrics(labels, scores, top_fraction=fraction, bootstrap=0)
    assert result.threshold == np.quantile(scores, 1 - fraction, method="higher")
    assert int((scores >= result.threshold).sum()) == round(fraction * 1000)
    assert result.sensitivity == pytest.approx(fraction)


def test_one_class_gives_no_auc_or_calibration_but_a_brier_score() -> None:
    scores = np.linspace(0.1, 0.6, 40)
    result = clinical_metrics(np.zeros(40), scores)
    for name in (
        "auc",
        "auc_low",
        "auc_high",
        "average_precision",
        "calibration_slope",
        "calibration_intercept",
        "sensitivity",
    ):
        assert math.isnan(getattr(result, name)), name
    assert result.brier == pytest.approx(float(np.mean(scores**2)))
    assert result.ppv == 0.0
    assert result.positives == 0


def test_only_positives_still_have_an_average_precision() -> None:
    result = clinical_metrics(np.ones(10), np.linspace(0.1, 0.9, 10))
    assert math.isnan(result.auc)
    assert result.average_precision == 1.0
    assert result.sensitivity == 0.1


@pytest.mark.parametrize(
    ("labels", "scores", "options", "problem"),
    [
        ([0, 1, 1], [0.1, 0.9], {}, "differ in length"),
        ([], [], {}, "empty"),
        ([0, 2, 1], [0.1, 0.5, 0.9], {}, "0 or 1"),
        ([0, 1, 1], [0.1, math.nan, 0.9], {}, "finite"),
        ([0, 1, 1], [0.1, math.inf, 0.9], {}, "finite"),
        ([0, 1, 1], [0.1, 1.5, 0.9], {}, r"within \[0, 1\]"),
        ([[0, 1]], [[0.1, 0.9]], {}, "1-D"),
        (["a", "b"], [0.1, 0.9], {}, "numeric"),
        ([0, 1], [0.1, 0.9], {"top_fraction": 0.0}, "top_fraction"),
        ([0, 1], [0.1, 0.9], {"top_fraction": 1.5}, "top_fraction"),
        ([0, 1], [0.1, 0.9], {"top_fraction": math.nan}, "top_fraction"),
        ([0, 1], [0.1, 0.9], {"bootstrap": -1}, "bootstrap"),
    ],
)
def test_inputs_that_cannot_be_scored_are_refused_by_name(
    labels: list[object], scores: list[object], options: dict[str, float], problem: str
) -> None:
    with pytest.raises(TrainingError, match=problem):
        clinical_metrics(np.array(labels), np.array(scores), **options)  # type: ignore[arg-type]


def test_inputs_are_left_unchanged() -> None:
    labels, risk = calibrated(500, seed=17)
    labels_before, risk_before = labels.copy(), risk.copy()
    clinical_metrics(labels, risk, bootstrap=50)
    np.testing.assert_array_equal(labels, labels_before)
    np.testing.assert_array_equal(risk, risk_before)


def test_to_dict_is_strict_json_with_undefined_values_as_null() -> None:
    result = clinical_metrics(np.zeros(20), np.linspace(0.1, 0.9, 20), bootstrap=10)
    data = result.to_dict()
    assert list(data) == [field.name for field in fields(ClinicalMetrics)]
    decoded = json.loads(json.dumps(data, allow_nan=False))
    assert decoded["auc"] is None
    assert decoded["calibration_slope"] is None
    assert decoded["brier"] == pytest.approx(result.brier)
    assert decoded["rows"] == 20
    defined = clinical_metrics(*calibrated(500, seed=18), bootstrap=20).to_dict()
    assert all(
        value is not None for value in json.loads(json.dumps(defined, allow_nan=False)).values()
    )

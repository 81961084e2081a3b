"""FedAvg arithmetic in ``common.fedavg``: checked against numpy's weighted average, no mocks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from common.errors import ProtocolError
from common.fedavg import (
    IMPRECISE_AVERAGE,
    WEIGHT_UNIT,
    average_from_sum,
    averaging_error,
    finite,
    finite_metrics,
    mean_metrics,
    split_seed,
    training_seed,
    weighted_payload,
)


def test_summed_payloads_divide_back_to_numpy_weighted_average() -> None:
    rng = np.random.default_rng(3)
    models = [rng.normal(size=50).astype(np.float32) for _ in range(4)]
    rows = [120, 4_000, 37, 9_999]
    total = np.sum([weighted_payload(m, n) for m, n in zip(models, rows, strict=True)], axis=0)
    expected = np.average(np.stack(models), axis=0, weights=rows)
    np.testing.assert_allclose(average_from_sum(total, 50), expected, rtol=1e-6)


def test_payload_is_weights_times_weight_then_the_weight() -> None:
    payload = weighted_payload(np.array([1.0, -2.0]), 5_000)
    w = 5_000 / WEIGHT_UNIT
    np.testing.assert_array_equal(payload, [w, -2.0 * w, w])
    assert payload.dtype == np.float64


def test_average_is_float32_whatever_the_sum_holds() -> None:
    assert average_from_sum(np.array([1.0, 2.0, 4.0]), 2).dtype == np.float32


@pytest.mark.parametrize("weight", [0.0, -1.0, math.nan, math.inf])
def test_an_aggregate_without_a_positive_weight_is_refused(weight: float) -> None:
    with pytest.raises(ProtocolError, match="not positive"):
        average_from_sum(np.array([1.0, 2.0, weight]), 2)


def test_an_aggregate_of_another_model_size_is_refused_with_both_sizes() -> None:
    with pytest.raises(ProtocolError, match="holds 3 values, expected 5"):
        average_from_sum(np.array([1.0, 2.0, 3.0]), 4)


def test_seeds_are_stable_across_processes_and_distinct_per_input() -> None:
    # Fixed values: these seeds must be the same in every deployment and release.
    assert training_seed(42, 1, "hospital-1") == training_seed(42, 1, "hospital-1")
    seeds = {
        training_seed(42, 1, "hospital-1"),
        training_seed(42, 2, "hospital-1"),
        training_seed(42, 1, "hospital-2"),
        training_seed(43, 1, "hospital-1"),
        split_seed(42, "hospital-1"),
    }
    assert len(seeds) == 5
    assert all(0 <= s < 2**32 for s in seeds)


def test_finite_metrics_drops_undefined_and_unknown_values() -> None:
    metrics = {"auc": math.nan, "accuracy": 0.9, "loss": 0.3, "train_loss": 0.2}
    assert finite_metrics(metrics) == {"accuracy": 0.9, "loss": 0.3}


def test_finite_makes_nested_values_json_safe() -> None:
    value = {"a": [1.0, math.nan, (math.inf, 2)], "b": {"c": -math.inf}, "d": "x"}
    cleaned = finite(value)
    assert cleaned == {"a": [1.0, None, [None, 2]], "b": {"c": None}, "d": "x"}
    json.dumps(cleaned, allow_nan=False)


def test_mean_metrics_is_the_unweighted_mean_ignoring_nan_and_unknown_names() -> None:
    reports = [
        {"auc": 0.5, "accuracy": math.nan, "loss": 1.0, "train_loss": 9.0},
        {"auc": 0.7, "accuracy": 0.8},
        {"auc": math.nan, "accuracy": 0.6, "loss": math.inf},
    ]
    assert mean_metrics(reports) == pytest.approx({"auc": 0.6, "accuracy": 0.7, "loss": 1.0})


def test_mean_metrics_of_nothing_usable_is_none() -> None:
    assert mean_metrics([]) is None
    assert mean_metrics([{}, {"auc": math.nan}, {"train_loss": 0.3}]) is None


def test_the_averaging_error_is_the_sum_error_over_the_sum_of_weights() -> None:
    total = np.array([5.0, -2.0, 0.25])  # two weighted values and their weights' sum
    assert averaging_error(total, 1e-3) == pytest.approx(4e-3)
    assert averaging_error(np.array([1.0, 0.0]), 1e-3) == math.inf  # no weight: no average
    assert averaging_error(total, 1e-2) > IMPRECISE_AVERAGE > averaging_error(total * 10, 1e-2)

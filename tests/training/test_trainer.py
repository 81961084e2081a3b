"""Tests of local training, evaluation and model saving at a hospital."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from common.errors import ConfigError, TrainingError
from common.metrics import Metrics, compute_metrics
from common.model import ModelConfig, initial_weights
from hospital_node.training import LocalTrainer, metrics_path

REPO_ROOT = Path(__file__).resolve().parents[2]
N_FEATURES = 20


def make_data(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A learnable problem: the label depends on a few features plus noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, N_FEATURES)).astype(np.float32)
    logit = 2.0 * x[:, 0] - 1.5 * x[:, 1] + x[:, 2] * x[:, 3] + 0.5 * rng.normal(size=rows)
    return x, (logit > 0).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return make_data(1200, seed=0)


@pytest.fixture(scope="module")
def holdout() -> tuple[np.ndarray, np.ndarray]:
    return make_data(600, seed=1)


@pytest.fixture(scope="module")
def trainer() -> LocalTrainer:
    return LocalTrainer(ModelConfig(), N_FEATURES)


@pytest.fixture(scope="module")
def start() -> np.ndarray:
    return initial_weights(ModelConfig(), N_FEATURES, seed=11)


def test_fit_returns_flat_float32_weights_loss_and_rows(
    trainer: LocalTrainer, data: tuple[np.ndarray, np.ndarray], start: np.ndarray
) -> None:
    x, y = data
    x_before, y_before, start_before = x.copy(), y.copy(), start.copy()
    result = trainer.fit(start, x, y, seed=1)
    assert result.weights.dtype == np.float32
    assert result.weights.shape == (trainer.parameter_count,)
    assert result.n == len(x)
    assert math.isfinite(result.loss)
    assert 0 < result.loss < 1
    assert not np.array_equal(result.weights, start)
    # Arguments are left untouched.
    assert np.array_equal(x, x_before)
    assert np.array_equal(y, y_before)
    assert np.array_equal(start, start_before)


def test_fit_is_deterministic_for_a_seed(
    trainer: LocalTrainer, data: tuple[np.ndarray, np.ndarray], start: np.ndarray
) -> None:
    x, y = data
    first = trainer.fit(start, x, y, seed=5)
    second = trainer.fit(start, x, y, seed=5)
    other_seed = trainer.fit(start, x, y, seed=6)
    assert first.weights.tobytes() == second.weights.tobytes()
    assert first.loss == second.loss
    assert first.weights.tobytes() != other_seed.weights.tobytes()


def test_fit_is_deterministic_across_processes(
    trainer: LocalTrainer,
    data: tuple[np.ndarray, np.ndarray],
    start: np.ndarray,
    tmp_path: Path,
) -> None:
    x, y = data
    inputs, output = tmp_path / "inputs.npz", tmp_path / "weights.npy"
    np.savez(inputs, x=x, y=y, start=start)
    script = textwrap.dedent(
        f"""
        import numpy as np
        from common.model import ModelConfig
        from hospital_node.training import LocalTrainer
        data = np.load({str(inputs)!r})
        trainer = LocalTrainer(ModelConfig(), {N_FEATURES})
        result = trainer.fit(data["start"], data["x"], data["y"], seed=21)
        np.save({str(output)!r}, result.weights)
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    in_process = trainer.fit(start, x, y, seed=21)
    assert np.load(output).tobytes() == in_process.weights.tobytes()


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_every_fit_starts_with_a_fresh_optimizer(
    optimizer: str, data: tuple[np.ndarray, np.ndarray], start: np.ndarray
) -> None:
    x, y = data
    config = ModelConfig(optimizer=optimizer, learning_rate=0.005, local_epochs=2)
    trainer = LocalTrainer(config, N_FEATURES)
    first = trainer.fit(start, x, y, seed=3)
    # Fits in between, on other weights and data, must leave no optimizer state behind.
    other_x, other_y = make_data(300, seed=9)
    trainer.fit(first.weights, other_x, other_y, seed=4)
    trainer.fit(initial_weights(config, N_FEATURES, seed=99), x, y, seed=8)
    again = trainer.fit(start, x, y, seed=3)
    fresh = LocalTrainer(config, N_FEATURES).fit(start, x, y, seed=3)
    assert again.weights.tobytes() == first.weights.tobytes()
    assert fresh.weights.tobytes() == first.weights.tobytes()
    assert again.loss == first.loss


def test_training_learns_a_learnable_problem(
    data: tuple[np.ndarray, np.ndarray], holdout: tuple[np.ndarray, np.ndarray]
) -> None:
    config = ModelConfig(local_epochs=5, learning_rate=0.05)
    trainer = LocalTrainer(config, N_FEATURES)
    start = initial_weights(config, N_FEATURES, seed=2)
    before = trainer.evaluate(start, *holdout)
    result = trainer.fit(start, *data, seed=0)
    after = trainer.evaluate(result.weights, *holdout)
    assert after.auc > 0.9
    assert after.auc > before.auc + 0.1
    assert after.loss < before.loss
    assert after.accuracy > 0.8


def test_evaluate_agrees_with_sklearn(
    trainer: LocalTrainer,
    data: tuple[np.ndarray, np.ndarray],
    holdout: tuple[np.ndarray, np.ndarray],
    start: np.ndarray,
) -> None:
    weights = trainer.fit(start, *data, seed=0).weights
    x, y = holdout
    probs = trainer.predict(weights, x)
    assert probs.shape == (len(x),)
    assert probs.dtype == np.float32
    metrics = trainer.evaluate(weights, x, y)
    assert metrics.n == len(x)
    assert metrics.auc == pytest.approx(roc_auc_score(y, probs), abs=1e-12)
    assert metrics.accuracy == pytest.approx(accuracy_score(y, probs > 0.5), abs=1e-12)
    assert metrics.loss == pytest.approx(log_loss(y, probs.astype(np.float64)), rel=1e-6)


def test_predict_handles_more_rows_than_one_chunk(trainer: LocalTrainer, start: np.ndarray) -> None:
    x, _ = make_data(9000, seed=4)
    probs = trainer.predict(start, x)
    assert probs.shape == (9000,)
    # Equal up to float32 rounding: matrix kernels differ with the number of rows.
    assert np.allclose(probs[:100], trainer.predict(start, x[:100]), rtol=0, atol=1e-6)
    assert np.allclose(probs[-100:], trainer.predict(start, x[-100:]), rtol=0, atol=1e-6)


def test_compute_metrics_agrees_with_sklearn_and_clips_loss() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=500).astype(np.float64)
    probs = np.clip(0.3 * y + 0.7 * rng.random(500), 0.0, 1.0)
    metrics = compute_metrics(y, probs)
    assert metrics == Metrics(
        auc=pytest.approx(roc_auc_score(y, probs)),  # type: ignore[arg-type]
        accuracy=pytest.approx(accuracy_score(y, probs > 0.5)),  # type: ignore[arg-type]
        loss=pytest.approx(log_loss(y, probs)),  # type: ignore[arg-type]
        n=500,
    )
    certain_and_wrong = compute_metrics(np.array([1.0, 0.0]), np.array([0.0, 1.0]))
    assert math.isfinite(certain_and_wrong.loss)
    assert certain_and_wrong.loss == pytest.approx(-math.log(1e-7), rel=1e-6)


def test_compute_metrics_auc_is_nan_for_a_single_class() -> None:
    metrics = compute_metrics(np.zeros(4), np.array([0.1, 0.2, 0.7, 0.4]))
    assert math.isnan(metrics.auc)
    assert metrics.accuracy == 0.75
    assert metrics.n == 4


@pytest.mark.parametrize(
    ("y_true", "y_prob"),
    [
        ([], []),
        ([0, 1], [0.5]),
        ([0, 2], [0.5, 0.5]),
        ([0, 1], [0.5, 1.5]),
        ([0, 1], [0.5, math.nan]),
    ],
)
def test_compute_metrics_rejects_unscorable_input(y_true: list[int], y_prob: list[float]) -> None:
    with pytest.raises(TrainingError):
        compute_metrics(np.array(y_true), np.array(y_prob))


def test_metrics_dict_round_trip_is_strict_json() -> None:
    metrics = Metrics(auc=math.nan, accuracy=0.5, loss=0.69, n=10)
    text = json.dumps(metrics.to_dict(), allow_nan=False)
    restored = Metrics.from_dict(json.loads(text))
    assert math.isnan(restored.auc)
    assert (restored.accuracy, restored.loss, restored.n) == (0.5, 0.69, 10)
    with pytest.raises(TrainingError):
        Metrics.from_dict({"auc": 0.5, "accuracy": 0.5, "loss": 0.1})


def test_save_model_round_trip(
    trainer: LocalTrainer,
    data: tuple[np.ndarray, np.ndarray],
    holdout: tuple[np.ndarray, np.ndarray],
    start: np.ndarray,
    tmp_path: Path,
) -> None:
    weights = trainer.fit(start, *data, seed=0).weights
    metrics = trainer.evaluate(weights, *holdout)
    path = tmp_path / "final" / "model.keras"
    trainer.save_model(weights, path, metrics)

    loaded = keras.models.load_model(path)
    x = holdout[0]
    expected = trainer.predict(weights, x)
    assert np.allclose(loaded.predict(x, verbose=0).reshape(-1), expected, atol=1e-6)
    scores = metrics_path(path)
    assert scores == tmp_path / "final" / "model.metrics.json"
    assert Metrics.from_dict(json.loads(scores.read_text())) == metrics
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.keras", "model.metrics.json"]

    # Saved again without metrics: the stale scores of the previous model disappear.
    trainer.save_model(start, path, None)
    assert not scores.exists()
    assert np.allclose(
        keras.models.load_model(path).predict(x, verbose=0).reshape(-1),
        trainer.predict(start, x),
        atol=1e-6,
    )


def test_save_model_requires_keras_suffix(
    trainer: LocalTrainer, start: np.ndarray, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"\.keras"):
        trainer.save_model(start, tmp_path / "model.h5", None)


def test_non_finite_start_weights_are_rejected(
    trainer: LocalTrainer, data: tuple[np.ndarray, np.ndarray], start: np.ndarray
) -> None:
    poisoned = start.copy()
    poisoned[7] = np.nan
    with pytest.raises(TrainingError, match="NaN"):
        trainer.fit(poisoned, *data, seed=0)
    poisoned[7] = np.inf
    with pytest.raises(TrainingError):
        trainer.evaluate(poisoned, *data)


def test_diverged_training_is_rejected(data: tuple[np.ndarray, np.ndarray]) -> None:
    config = ModelConfig(learning_rate=1e30)
    trainer = LocalTrainer(config, N_FEATURES)
    x, y = data
    with pytest.raises(TrainingError, match="diverged"):
        trainer.fit(initial_weights(config, N_FEATURES, seed=0), x * 1e6, y, seed=0)


def test_mismatched_inputs_are_rejected(
    trainer: LocalTrainer, data: tuple[np.ndarray, np.ndarray], start: np.ndarray
) -> None:
    x, y = data
    with pytest.raises(ConfigError, match="different architecture"):
        trainer.fit(start[:-1], x, y, seed=0)
    with pytest.raises(TrainingError, match="shape"):
        trainer.fit(start, x[:, :-1], y, seed=0)
    with pytest.raises(TrainingError, match="labels"):
        trainer.fit(start, x, y[:-1], seed=0)
    with pytest.raises(TrainingError, match="0 or 1"):
        trainer.fit(start, x, y * 2, seed=0)
    with pytest.raises(TrainingError, match="zero rows"):
        trainer.fit(start, x[:0], y[:0], seed=0)
    with pytest.raises(ConfigError):
        trainer.fit(start, x, y, seed=-1)


def test_errors_inside_keras_calls_become_training_errors_with_their_cause(
    start: np.ndarray, tmp_path: Path
) -> None:
    trainer = LocalTrainer(ModelConfig(), N_FEATURES)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the model's folder should be")
    with pytest.raises(TrainingError, match="could not save the model") as caught:
        trainer.save_model(start, blocker / "model.keras", None)
    assert isinstance(caught.value.__cause__, OSError)

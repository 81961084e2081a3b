"""Local training and evaluation at a hospital, on plain flat weight vectors.

The rest of the system sees the model only as a flat float32 vector (that is what gets
encrypted and summed), so :class:`LocalTrainer` takes and returns vectors and keeps its Keras
model private. The model is built once per trainer: building Keras models again and again
costs time and leaks memory in long runs.

Training is reproducible: the batches and their order come from ``numpy.random.default_rng``
seeded by the caller, Keras is told not to shuffle, and the optimizer starts fresh on every
call (a FedAvg client starts each round with a fresh optimizer). The same weights, data and
seed give bitwise the same result in any process on the same machine and TensorFlow build.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from common.errors import ConfigError, HeflError, TrainingError
from common.logs import log_event
from common.metrics import Metrics, compute_metrics
from common.model import ModelConfig, build_model, flatten, parameter_count, unflatten
from common.quiet_tensorflow import load as load_tensorflow
from hospital_node.trainer import EpochCallback, FitResult, epoch_orders

load_tensorflow()  # TensorFlow's native start-up lines stay off the terminal

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

logger = logging.getLogger(__name__)

MODEL_SUFFIX = ".keras"
METRICS_SUFFIX = ".metrics.json"
# Rows per forward pass in predict(): bounds memory on large hold-outs.
PREDICT_CHUNK_ROWS = 8192


@contextmanager
def _translating(action: str) -> Iterator[None]:
    """Turn Keras, TensorFlow and OS errors into :class:`TrainingError`; ours pass through."""
    try:
        yield
    except HeflError:
        raise
    except (
        tf.errors.OpError,
        ValueError,
        TypeError,
        RuntimeError,
        ArithmeticError,
        OSError,
    ) as exc:
        raise TrainingError(f"could not {action}: {type(exc).__name__}: {exc}") from exc


def metrics_path(model_path: Path) -> Path:
    """Where :meth:`LocalTrainer.save_model` puts the metrics of ``model_path``."""
    return model_path.with_suffix(METRICS_SUFFIX)


class LocalTrainer:
    """Trains, evaluates, predicts with and saves one hospital's copy of the shared model.

    Not thread-safe: every call loads its weights into the one underlying Keras model.
    ``on_epoch`` (for progress bars) is told of each local epoch as :meth:`fit` ends it; it
    only watches, so it changes no result, but an exception it raises aborts the fit.
    """

    def __init__(
        self, config: ModelConfig, n_features: int, *, on_epoch: EpochCallback | None = None
    ) -> None:
        self._config = config
        self._on_epoch = on_epoch
        self._size = parameter_count(config, n_features)  # also validates n_features
        self._n_features = n_features
        with _translating("build the model"):
            self._model = build_model(config, n_features)
            optimizer = self._model.optimizer
            optimizer.build(self._model.trainable_variables)
            # Snapshot of a never-used optimizer; restoring it is "a fresh optimizer" without
            # recompiling, which would retrace the training step on every round.
            self._fresh_optimizer_state = [
                keras.ops.convert_to_numpy(variable) for variable in optimizer.variables
            ]

    @property
    def config(self) -> ModelConfig:
        """The configuration the model was built from."""
        return self._config

    @property
    def n_features(self) -> int:
        """Number of input columns the model expects."""
        return self._n_features

    @property
    def parameter_count(self) -> int:
        """Length of the flat weight vectors this trainer takes and returns."""
        return self._size

    def fit(self, weights: np.ndarray, x: np.ndarray, y: np.ndarray, *, seed: int) -> FitResult:
        """Train from ``weights`` on ``(x, y)`` for ``config.local_epochs`` epochs.

        Raises :class:`TrainingError` if training fails or diverges (non-finite weights or
        loss): a diverged model must never be uploaded.
        """
        features = self._features(x)
        labels = self._labels(y, len(features))
        if len(features) == 0:
            raise TrainingError("cannot train on zero rows")
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ConfigError(f"training seed must be a non-negative integer, got {seed!r}")
        orders = epoch_orders(len(features), self._config.local_epochs, seed)
        started = time.perf_counter()
        loss = math.nan
        with _translating("train the model"):
            self._load(weights)
            self._reset_optimizer()
            for epoch, order in enumerate(orders):
                history = self._model.fit(
                    features[order],
                    labels[order],
                    batch_size=self._config.batch_size,
                    epochs=1,
                    shuffle=False,
                    verbose=0,
                )
                loss = float(history.history["loss"][-1])
                if self._on_epoch is not None:
                    self._on_epoch(epoch, len(orders), loss)
            trained = flatten(self._model.get_weights())
        if not (math.isfinite(loss) and np.all(np.isfinite(trained))):
            raise TrainingError(
                f"training diverged (loss={loss}); lower the learning rate or check the features"
            )
        log_event(
            logger,
            "local_fit_done",
            level=logging.DEBUG,
            rows=len(features),
            epochs=self._config.local_epochs,
            loss=loss,
            seconds=time.perf_counter() - started,
        )
        return FitResult(weights=trained, loss=loss, n=len(features))

    def predict(self, weights: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Predicted probabilities of readmission, one float32 per row of ``x``."""
        features = self._features(x)
        with _translating("predict"):
            self._load(weights)
            chunks = [
                keras.ops.convert_to_numpy(
                    self._model(features[start : start + PREDICT_CHUNK_ROWS], training=False)
                ).reshape(-1)
                for start in range(0, len(features), PREDICT_CHUNK_ROWS)
            ]
        if not chunks:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(chunks).astype(np.float32, copy=False)

    def evaluate(self, weights: np.ndarray, x: np.ndarray, y: np.ndarray) -> Metrics:
        """Score ``weights`` on labelled rows (for example the local hold-out)."""
        features = self._features(x)
        labels = self._labels(y, len(features))
        return compute_metrics(labels, self.predict(weights, features))

    def save_model(self, weights: np.ndarray, path: Path, metrics: Metrics | None) -> None:
        """Write the model with ``weights`` to ``path`` (a ``.keras`` file), and its metrics.

        The metrics go to ``<name>.metrics.json`` beside the model; without metrics a stale
        file of that name is removed so it cannot be mistaken for this model's scores. Both
        files are written to a temporary name first and then renamed into place.
        """
        path = Path(path)
        if path.suffix != MODEL_SUFFIX:
            raise ConfigError(f"model path must end with {MODEL_SUFFIX}: {path}")
        scores = metrics_path(path)
        with _translating(f"save the model to {path}"):
            self._load(weights)
            # The file holds the shared model only, not optimizer state left by local data.
            self._reset_optimizer()
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp{MODEL_SUFFIX}")
            try:
                self._model.save(temporary)
                os.replace(temporary, path)
            finally:
                temporary.unlink(missing_ok=True)
            if metrics is None:
                scores.unlink(missing_ok=True)
            else:
                staged = scores.with_name(f".{scores.name}.{os.getpid()}.tmp")
                staged.write_text(json.dumps(metrics.to_dict(), indent=2, sort_keys=True) + "\n")
                os.replace(staged, scores)

    def saved_weights(self, path: Path) -> np.ndarray:
        """The flat weights of a model :meth:`save_model` wrote to ``path``.

        Raises :class:`TrainingError` when the file is no Keras model of this trainer's
        architecture and number of features.
        """
        with _translating(f"read the model {path}"):
            try:
                self._model.load_weights(Path(path))
            except (zipfile.BadZipFile, KeyError) as exc:  # not a .keras archive, or not ours
                raise TrainingError(f"{path} is no Keras model file: {exc}") from exc
            weights = flatten(self._model.get_weights())
        if not np.all(np.isfinite(weights)):
            raise TrainingError(f"the model {path} holds NaN or infinite weights")
        return weights

    def _features(self, x: np.ndarray) -> np.ndarray:
        with _translating("read the features"):
            features = np.asarray(x, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != self._n_features:
            raise TrainingError(
                f"features must have shape (rows, {self._n_features}), got {features.shape}"
            )
        if not np.all(np.isfinite(features)):
            raise TrainingError("features contain NaN or infinite values")
        return features

    @staticmethod
    def _labels(y: np.ndarray, rows: int) -> np.ndarray:
        with _translating("read the labels"):
            labels = np.asarray(y, dtype=np.float32).reshape(-1)
        if labels.size != rows:
            raise TrainingError(f"{labels.size} labels for {rows} rows")
        if not np.all((labels == 0) | (labels == 1)):
            raise TrainingError("labels must be 0 or 1")
        return labels.reshape(-1, 1)

    def _load(self, weights: np.ndarray) -> None:
        vector = np.asarray(weights, dtype=np.float32)
        if vector.shape != (self._size,):
            raise ConfigError(
                f"weight vector has shape {vector.shape}, the model needs ({self._size},): "
                "it was made for a different architecture or number of features"
            )
        if not np.all(np.isfinite(vector)):
            raise TrainingError("weights contain NaN or infinite values")
        self._model.set_weights(unflatten(vector, self._model))

    def _reset_optimizer(self) -> None:
        variables = self._model.optimizer.variables
        for variable, value in zip(variables, self._fresh_optimizer_state, strict=True):
            variable.assign(value)

"""The Trainer seam: what a hospital needs from local training, without TensorFlow.

``hospital_node.training.LocalTrainer`` (Keras) is the implementation; the embedded run, the
comparison and the benchmarks take a :data:`TrainerFactory`, so a benchmark wraps it with timing
and a test substitutes a failing one, without patching anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from common.metrics import Metrics
from common.model import ModelConfig


@dataclass(frozen=True, eq=False)
class FitResult:
    """Outcome of one local fit: new flat weights, mean loss of the last epoch, rows used.

    Compared by identity (``eq=False``): ``==`` on arrays is element-wise, so compare
    ``weights`` explicitly.
    """

    weights: np.ndarray
    loss: float
    n: int


class Trainer(Protocol):
    """Trains and scores the shared model on flat weight vectors."""

    def fit(self, weights: np.ndarray, x: np.ndarray, y: np.ndarray, *, seed: int) -> FitResult: ...

    def evaluate(self, weights: np.ndarray, x: np.ndarray, y: np.ndarray) -> Metrics: ...

    def predict(self, weights: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Predicted probabilities, one per row of ``x``."""
        ...

    def save_model(self, weights: np.ndarray, path: Path, metrics: Metrics | None) -> None: ...


def epoch_orders(rows: int, epochs: int, seed: int) -> list[np.ndarray]:
    """The row order of each epoch of one :meth:`LocalTrainer.fit` with this ``seed``.

    Public so that the TFF reference engine (``hefl.tff``) trains on exactly the same batches.
    """
    rng = np.random.default_rng(seed)
    return [rng.permutation(rows) for _ in range(epochs)]


#: Builds a hospital's trainer for a model configuration and a number of input features.
TrainerFactory = Callable[[ModelConfig, int], Trainer]

#: Told after each local epoch of a fit: the epoch's index (from 0), the fit's number of
#: epochs and the epoch's mean training loss. Progress bars listen here.
EpochCallback = Callable[[int, int, float], None]


def keras_trainer(model: ModelConfig, n_features: int) -> Trainer:
    """The default factory: a Keras ``LocalTrainer`` (imports TensorFlow on first use)."""
    from hospital_node.training import LocalTrainer

    return LocalTrainer(model, n_features)


def keras_trainer_with(*, on_epoch: EpochCallback | None = None) -> TrainerFactory:
    """A factory like :func:`keras_trainer` whose trainers report each local epoch to
    ``on_epoch``; the trained weights are the same with or without it."""

    def build(model: ModelConfig, n_features: int) -> Trainer:
        from hospital_node.training import LocalTrainer

        return LocalTrainer(model, n_features, on_epoch=on_epoch)

    return build

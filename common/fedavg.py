"""FedAvg arithmetic shared by every party and engine: the plaintext side of the Aggregator seam.

The coordinator adds ciphertexts (``common.crypto.Aggregator``); everything around that sum is
here, in one place, so the roles, the embedded run, the comparison, the TFF reference engine and
the benchmarks compute it identically:

- what a hospital encrypts: its weights scaled by its weight, and the weight itself
  (:func:`weighted_payload`), and how every hospital turns the decrypted sum back into the
  round's average (:func:`average_from_sum`, :func:`sane_average`), from which its server
  optimizer (``common.server_optimizer``) makes the next global model;
- the seeds that make a run reproducible in any deployment (:func:`training_seed`,
  :func:`split_seed`);
- the unweighted mean of hospitals' metrics (the coordinator never learns dataset sizes) and the
  JSON-safe form of undefined metrics (:func:`mean_metrics`, :func:`finite_metrics`,
  :func:`finite`).

Plain functions over numpy arrays and dicts; no I/O.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from common.errors import ProtocolError

#: A hospital's FedAvg weight is its training-row count divided by this, so encrypted values stay
#: small (within the cipher's value bound) while weights keep their ratios.
WEIGHT_UNIT: Final = 10_000.0
#: The hold-out metrics hospitals report and the coordinator averages.
METRIC_NAMES: Final = ("auc", "accuracy", "loss")
#: What a hospital's final report adds: the clinical metrics of the final model on its hold-out
#: (``common.clinical.ClinicalMetrics``, without its row counts: the coordinator never learns
#: dataset sizes). The operator's summary keeps them per hospital; they are not averaged.
CLINICAL_METRIC_NAMES: Final = (
    "auc_low",
    "auc_high",
    "average_precision",
    "brier",
    "calibration_slope",
    "calibration_intercept",
    "top_fraction",
    "threshold",
    "sensitivity",
    "ppv",
)


#: The fewest updates a round's sum may hold: with 2, each contributor learns the other's update.
MIN_CONTRIBUTORS: Final = 3


@dataclass(frozen=True, kw_only=True)
class Sanity:
    """What a hospital accepts as a global update before it trains on it.

    ``max_rows``: the most training rows a contributor may claim on average (the sum of weights
    is at most ``summands * max_rows / WEIGHT_UNIT``; the encoding's value bound already caps
    one claim, at 819,200 rows with the default ``max_hospitals``). ``max_update_ratio``: the
    largest change of the model, as a multiple of its norm (at least 1), from the last global
    model this hospital saw. Measured on the Diabetes-130 MLP (`docs/security.md`): honest
    rounds change it by 0.7-3.5% of its norm; a hospital that claims 800,000 rows of weights all
    0.99 moves it by about 15 times its norm.
    """

    max_rows: int = 10_000_000
    max_update_ratio: float = 1.0

    def __post_init__(self) -> None:
        if self.max_rows < 1 or not (0 < self.max_update_ratio < math.inf):
            raise ProtocolError(f"invalid sanity bounds {self}")


DEFAULT_SANITY: Final = Sanity()


def weighted_payload(weights: np.ndarray, n_train: int) -> np.ndarray:
    """``[w * theta..., w]``: what a hospital encrypts (w reveals nothing beyond its ratio)."""
    w = n_train / WEIGHT_UNIT
    return np.concatenate([np.asarray(weights, dtype=np.float64) * w, [w]])


def payload_size(n_params: int) -> int:
    """How many values ``weighted_payload`` yields for a model of ``n_params`` parameters."""
    return n_params + 1


def average_from_sum(total: np.ndarray, n_params: int) -> np.ndarray:
    """Divide the decrypted sum of weighted models by the decrypted sum of weights (float32:
    under plain FedAvg, the global model the hospitals train from)."""
    return weighted_average(total, n_params).astype(np.float32)


def weighted_average(total: np.ndarray, n_params: int) -> np.ndarray:
    """:func:`average_from_sum` in float64: what the server optimizer steps towards."""
    if total.shape != (payload_size(n_params),):
        raise ProtocolError(
            f"aggregate holds {total.shape[0]} values, expected {payload_size(n_params)}"
        )
    weight = float(total[-1])
    if not np.isfinite(weight) or weight <= 0:
        raise ProtocolError(
            f"global update refused: the sum of weights is {weight}, not positive (a contributor "
            "sent a negative or zero weight)"
        )
    return np.asarray(total[:-1], dtype=np.float64) / weight


#: A decrypted sum whose stated error (a 20-sigma bound) could move an averaged weight by more
#: than this gets a warning: typical errors are 20 times smaller.
IMPRECISE_AVERAGE: Final = 1e-2


def averaging_error(total: np.ndarray, error: float) -> float:
    """How far a decrypted sum's per-value ``error`` can move one averaged weight: the average
    divides it by the sum of the FedAvg weights (the last value), small for few rows."""
    weight = float(total[-1])
    return error / weight if weight > 0 else math.inf


def sane_average(
    total: np.ndarray, summands: int, previous: np.ndarray, sanity: Sanity
) -> np.ndarray:
    """The round's weighted average (float64) from a decrypted sum, if it is within
    ``sanity``'s bounds; ``previous`` is the global model the round started from."""
    weights = weighted_average(total, previous.shape[0])
    rows = float(total[-1]) * WEIGHT_UNIT
    if rows > summands * sanity.max_rows:
        raise ProtocolError(
            f"global update refused: {summands} contributors claim {rows:,.0f} training rows, "
            f"more than {sanity.max_rows:,} each on average (--max-rows)"
        )
    if not np.all(np.isfinite(weights)):
        raise ProtocolError("global update refused: the model holds values that are not finite")
    step = float(np.linalg.norm(weights - previous))
    allowed = sanity.max_update_ratio * max(float(np.linalg.norm(previous)), 1.0)
    if step > allowed:
        raise ProtocolError(
            f"global update refused: it moves the model by {step:.4g}, more than "
            f"{sanity.max_update_ratio:g} times its norm ({allowed:.4g}; --max-update-ratio)"
        )
    return weights


def _seed(material: str) -> int:
    return int.from_bytes(hashlib.sha256(material.encode()).digest()[:4], "little")


def training_seed(seed: int, round_: int, hospital: str) -> int:
    """Per-round, per-hospital shuffling seed, the same in every process and deployment."""
    return _seed(f"{seed}:{round_}:{hospital}")


def split_seed(seed: int, hospital: str) -> int:
    """Seed of a hospital's patient-grouped train/test split, the same in every deployment."""
    return _seed(f"split:{seed}:{hospital}")


def mean_metrics(reports: Sequence[Mapping[str, float]]) -> dict[str, float] | None:
    """Unweighted mean over hospitals of each metric, ignoring undefined values (NaN)."""
    out: dict[str, float] = {}
    for name in METRIC_NAMES:
        values = [r[name] for r in reports if name in r and math.isfinite(r[name])]
        if values:
            out[name] = sum(values) / len(values)
    return out or None


def finite_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """One hospital's hold-out metrics (the averaged and the clinical ones) without undefined
    values (e.g. a one-class AUC); any other key a hospital sent is dropped."""
    names = (*METRIC_NAMES, *CLINICAL_METRIC_NAMES)
    return {k: metrics[k] for k in names if k in metrics and math.isfinite(metrics[k])}


def finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value

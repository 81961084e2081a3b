"""FedAvg arithmetic shared by every party and engine: the plaintext side of the Aggregator seam.

The coordinator adds ciphertexts (``common.crypto.Aggregator``); everything around that sum is
here, in one place, so the roles, the embedded run, the comparison, the TFF reference engine and
the benchmarks compute it identically:

- what a hospital encrypts: its weights scaled by its weight, and the weight itself
  (:func:`weighted_payload`), and how every hospital turns the decrypted sum back into the
  global model (:func:`average_from_sum`);
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
from typing import Any, Final

import numpy as np

from common.errors import ProtocolError

#: A hospital's FedAvg weight is its training-row count divided by this, so encrypted values stay
#: small (within the cipher's value bound) while weights keep their ratios.
WEIGHT_UNIT: Final = 10_000.0
#: The hold-out metrics hospitals report and the coordinator averages.
METRIC_NAMES: Final = ("auc", "accuracy", "loss")


#: The fewest updates a round's sum may hold: with 2, each contributor learns the other's update.
MIN_CONTRIBUTORS: Final = 3


def weighted_payload(weights: np.ndarray, n_train: int) -> np.ndarray:
    """``[w * theta..., w]``: what a hospital encrypts (w reveals nothing beyond its ratio)."""
    w = n_train / WEIGHT_UNIT
    return np.concatenate([np.asarray(weights, dtype=np.float64) * w, [w]])


def payload_size(n_params: int) -> int:
    """How many values ``weighted_payload`` yields for a model of ``n_params`` parameters."""
    return n_params + 1


def average_from_sum(total: np.ndarray, n_params: int) -> np.ndarray:
    """Divide the decrypted sum of weighted models by the decrypted sum of weights."""
    if total.shape != (payload_size(n_params),):
        raise ProtocolError(
            f"aggregate holds {total.shape[0]} values, expected {payload_size(n_params)}"
        )
    weight = float(total[-1])
    if not np.isfinite(weight) or weight <= 0:
        raise ProtocolError(f"aggregate weight {weight} is not positive")
    return (total[:-1] / weight).astype(np.float32)


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
    """One hospital's hold-out metrics without undefined values (e.g. a one-class AUC)."""
    return {k: metrics[k] for k in METRIC_NAMES if k in metrics and math.isfinite(metrics[k])}


def finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value

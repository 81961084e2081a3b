"""A run folder as the report reads it: ``summary.json`` checked, ``scores.npz`` when present.

Only what the report draws is checked, so a summary of an older run or of ``--engine tff``
(no ``data``, no ``scores.npz``) still gives a report, with the parts it lacks said so. Every
error names the file at fault.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import ConfigError
from common.server_optimizer import DEFAULT_SERVER_OPTIMIZER
from hefl.holdout import SCORES_FILE, HoldoutScores, read_scores
from hefl.reporting import SUMMARY_FILE, federated_method


@dataclass(frozen=True)
class RoundPoint:
    """One round's mean hold-out metrics over the hospitals (NaN when not recorded)."""

    round: int
    auc: float
    loss: float


@dataclass(frozen=True, eq=False)
class RunRecord:
    """What one run folder says, ready to draw."""

    folder: Path
    summary: Mapping[str, Any]
    results: tuple[Mapping[str, Any], ...]
    rounds: Mapping[str, tuple[RoundPoint, ...]]  # federated run label -> its rounds
    final_by_hospital: Mapping[str, Mapping[str, float]]  # run label -> hospital -> final AUC
    scores: HoldoutScores | None

    @property
    def config(self) -> Mapping[str, Any]:
        config = self.summary.get("config")
        return config if isinstance(config, Mapping) else {}

    @property
    def data(self) -> Mapping[str, Any]:
        """``summary.json``'s ``data`` (each hospital's rows), empty in older runs."""
        data = self.summary.get("data")
        return data if isinstance(data, Mapping) else {}


def load_run(folder: Path) -> RunRecord:
    """Read ``folder/summary.json`` (required) and ``folder/scores.npz`` (optional)."""
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder: give the --out folder of hefl simulate")
    path = folder / SUMMARY_FILE
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{path} not found: give the --out folder of a finished hefl simulate run"
        ) from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is not a readable JSON summary: {exc}") from exc
    if not isinstance(summary, dict):
        raise ConfigError(f"{path}: expected a JSON object, found {type(summary).__name__}")
    results = summary.get("results")
    if not isinstance(results, list) or not results:
        raise ConfigError(f"{path}: 'results' must be a non-empty list of result rows")
    for index, row in enumerate(results):
        if not (isinstance(row, dict) and isinstance(row.get("method"), str)):
            raise ConfigError(f"{path}: results[{index}] has no 'method' name")
        if not _number(row.get("auc"), allow_none=True):
            raise ConfigError(f"{path}: results[{index}] 'auc' is not a number")
        if row.get("clinical") is not None and not isinstance(row["clinical"], dict):
            raise ConfigError(f"{path}: results[{index}] 'clinical' is not an object")
    runs = summary.get("runs", {})
    if not isinstance(runs, dict):
        raise ConfigError(f"{path}: 'runs' must be an object")
    rounds: dict[str, tuple[RoundPoint, ...]] = {}
    finals: dict[str, dict[str, float]] = {}
    config = summary.get("config")
    he = _mapping(config, "he")
    scheme = he.get("scheme")
    # Named as the results table names them (absent from older runs and plain FedAvg's).
    server = _mapping(_mapping(config, "model"), "server_optimizer").get(
        "name", DEFAULT_SERVER_OPTIMIZER
    )
    for name, run in runs.items():
        if not isinstance(run, dict) or "rounds" not in run:
            continue  # e.g. max_abs_weight_difference
        label = federated_method(
            str(name), str(server), scheme=scheme if isinstance(scheme, str) else None
        )
        rounds[label] = _rounds(path, name, run["rounds"])
        finals[label] = _final_by_hospital(run["rounds"])
    scores_path = folder / SCORES_FILE
    scores = read_scores(scores_path) if scores_path.exists() else None
    return RunRecord(
        folder=folder,
        summary=summary,
        results=tuple(results),
        rounds=rounds,
        final_by_hospital=finals,
        scores=scores,
    )


def _mapping(parent: Any, key: str) -> Mapping[str, Any]:
    value = parent.get(key) if isinstance(parent, Mapping) else None
    return value if isinstance(value, Mapping) else {}


def _number(value: Any, *, allow_none: bool = False) -> bool:
    if value is None:
        return allow_none
    return isinstance(value, int | float) and not isinstance(value, bool)


def _metric(metrics: Any, key: str) -> float:
    value = metrics.get(key) if isinstance(metrics, dict) else None
    return float(value) if _number(value) and value is not None else math.nan


def _rounds(path: Path, name: str, records: Any) -> tuple[RoundPoint, ...]:
    if not isinstance(records, list):
        raise ConfigError(f"{path}: runs.{name}.rounds must be a list of rounds")
    points = []
    for index, record in enumerate(records):
        if not (isinstance(record, dict) and _number(record.get("round"))):
            raise ConfigError(f"{path}: runs.{name}.rounds[{index}] has no round number")
        metrics = record.get("holdout_metrics_mean")
        points.append(
            RoundPoint(int(record["round"]), _metric(metrics, "auc"), _metric(metrics, "loss"))
        )
    return tuple(points)


def _final_by_hospital(records: list[Any]) -> dict[str, float]:
    """Each hospital's AUC of the final model on its own test split, as it reported it (the
    last round's per-hospital record; the coordinator writes the final reports there)."""
    last = records[-1] if records else {}
    by_hospital = last.get("holdout_metrics_by_hospital") if isinstance(last, dict) else None
    if not isinstance(by_hospital, dict):
        return {}
    return {str(h): _metric(m, "auc") for h, m in by_hospital.items()}

"""The main job: encrypted FedAvg next to plaintext FedAvg, local-only and centralized training.

All four are evaluated on the same pooled hold-out (the union of the hospitals' patient-grouped
test splits), so the table compares like with like.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.crypto import (
    open_aggregator,
    open_cipher,
    plain_aggregator,
    plain_cipher,
    run_key_ceremony,
)
from common.errors import ConfigError
from common.metrics import Metrics
from common.store import LocalStore, Store, open_store
from coordinator.state import RoundRecord, RunState
from hefl.simulation import Cohort, SimulationConfig, load_cohort, run_federated
from hospital_node.service import training_seed
from hospital_node.training import LocalTrainer


@dataclass(frozen=True, kw_only=True)
class Row:
    method: str
    auc: float
    accuracy: float
    loss: float
    seconds: float
    bytes_uploaded: int | None


def _row(method: str, metrics: Metrics, seconds: float, uploaded: int | None) -> Row:
    return Row(
        method=method,
        auc=metrics.auc,
        accuracy=metrics.accuracy,
        loss=metrics.loss,
        seconds=seconds,
        bytes_uploaded=uploaded,
    )


def train_alone(
    config: SimulationConfig, trainer: LocalTrainer, x: np.ndarray, y: np.ndarray, name: str
) -> np.ndarray:
    """As many local epochs as a federated hospital gets over the whole run."""
    from common.model import initial_weights

    weights = initial_weights(config.model, trainer.n_features, config.seed)
    for round_ in range(1, config.rounds + 1):
        weights = trainer.fit(weights, x, y, seed=training_seed(config.seed, round_, name)).weights
    return weights


def format_mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f} MB"


def progress_printer(
    total_rounds: int, n_hospitals: int, emit: Callable[[str], None]
) -> Callable[[RoundRecord, RunState], None]:
    def show(record: RoundRecord, state: RunState) -> None:
        m = record.model_metrics or {}
        auc, loss = m.get("auc", math.nan), m.get("loss", math.nan)
        emit(
            f"  round {record.round:>3}/{total_rounds}  hospitals {len(record.accepted)}/"
            f"{n_hospitals}  auc {auc:.4f}  loss {loss:.4f}  {record.seconds:6.1f} s  "
            f"uploaded {format_mb(record.bytes_uploaded)}"
        )

    return show


def render_table(rows: list[Row]) -> str:
    header = (
        f"{'method':<28} {'test AUC':>9} {'accuracy':>9} {'loss':>8} {'seconds':>8} "
        f"{'uploaded':>11}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.method:<28} {r.auc:>9.4f} {r.accuracy:>9.4f} {r.loss:>8.4f} "
            f"{r.seconds:>8.1f} {format_mb(r.bytes_uploaded):>11}"
        )
    return "\n".join(lines)


OUTPUT_MARKER = ".hefl-output"


def prepare_output(out: Path) -> Path:
    """Start from an empty output folder, but never delete a folder this tool did not make."""
    if out.exists() and any(out.iterdir()):
        if not (out / OUTPUT_MARKER).exists():
            raise ConfigError(
                f"output folder {out} is not empty and was not written by hefl; "
                "choose another --out (it is replaced on every run)"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / OUTPUT_MARKER).write_text("written by hefl simulate; replaced on every run\n")
    return out


def run_comparison(
    config: SimulationConfig, *, emit: Callable[[str], None] = print, baselines: bool = True
) -> dict[str, Any]:
    """Run the whole comparison and write ``summary.json`` and the models under ``config.out``."""
    out = prepare_output(config.out)
    emit(
        f"data: {config.csv} ({config.schema}), {config.hospitals} hospitals, "
        f"partition {config.partition}, {config.rounds} rounds, seed {config.seed}"
    )
    cohort: Cohort = load_cohort(config)
    for name, d in zip(cohort.names, cohort.data, strict=True):
        emit(
            f"  {name}: {len(d.y_train)} train / {len(d.y_test)} test rows, "
            f"positive rate {float(np.mean(d.y_train)):.3f}"
        )
    x_test, y_test = cohort.pooled_test
    evaluator = LocalTrainer(config.model, cohort.n_features)
    keys = out / "keys"
    run_key_ceremony(config.he, keys / "hospital", keys / "coordinator")
    store: Store = open_store(config.store) if config.store else LocalStore(out / "store")
    rows: list[Row] = []
    runs: dict[str, Any] = {}

    def federated(label: str, run: str, cipher_for: Any, aggregator: Any) -> np.ndarray:
        emit(f"{label}:")
        result = run_federated(
            config,
            cohort,
            run=run,
            cipher_for=cipher_for,
            aggregator=aggregator,
            store=store,
            on_progress=progress_printer(config.rounds, config.hospitals, emit),
        )
        metrics = evaluator.evaluate(result.weights, x_test, y_test)
        rows.append(_row(label, metrics, result.seconds, result.bytes_uploaded))
        runs[run] = result.summary
        return result.weights

    encrypted = federated(
        f"encrypted FedAvg ({config.he.scheme.upper()})",
        "encrypted",
        lambda _name: open_cipher(keys / "hospital"),
        open_aggregator(keys / "coordinator"),
    )
    if baselines:
        plaintext = federated(
            "plaintext FedAvg", "plaintext", lambda _name: plain_cipher(), plain_aggregator()
        )
        runs["max_abs_weight_difference"] = float(np.max(np.abs(encrypted - plaintext)))
        local_rows = []
        for name, d in zip(cohort.names, cohort.data, strict=True):
            started = time.perf_counter()
            weights = train_alone(config, evaluator, d.x_train, d.y_train, name)
            metrics = evaluator.evaluate(weights, x_test, y_test)
            local_rows.append(_row(f"{name} alone", metrics, time.perf_counter() - started, None))
        rows.extend(local_rows)
        rows.append(
            Row(
                method="mean of hospitals alone",
                auc=float(np.mean([r.auc for r in local_rows])),
                accuracy=float(np.mean([r.accuracy for r in local_rows])),
                loss=float(np.mean([r.loss for r in local_rows])),
                seconds=float(sum(r.seconds for r in local_rows)),
                bytes_uploaded=None,
            )
        )
        started = time.perf_counter()
        x_train, y_train = cohort.pooled_train
        weights = train_alone(config, evaluator, x_train, y_train, "centralized")
        rows.append(
            _row(
                "centralized (pooled data)",
                evaluator.evaluate(weights, x_test, y_test),
                time.perf_counter() - started,
                None,
            )
        )
    table = render_table(rows)
    emit("")
    emit(f"pooled hold-out: {len(y_test)} encounters, positive rate {float(np.mean(y_test)):.3f}")
    emit(table)
    first = runs["encrypted"]["rounds"][0]
    per_hospital = first["bytes_uploaded"] / max(1, len(first["accepted"]))
    upload = {
        "bytes_per_hospital_per_round": per_hospital,
        "parameters": int(encrypted.shape[0]),
        "bytes_per_parameter": per_hospital / encrypted.shape[0],
    }
    emit(
        f"\n{config.he.scheme.upper()} upload: {per_hospital / 1e3:.1f} kB per hospital per round "
        f"for {upload['parameters']} parameters = {upload['bytes_per_parameter']:.2f} bytes per "
        "parameter (float32: 4)"
    )
    summary = {
        "config": {**config.describe(), "he": config.he.to_dict()},
        "n_features": cohort.n_features,
        "parameters": int(encrypted.shape[0]),
        "upload": upload,
        "results": [asdict(r) for r in rows],
        "runs": runs,
    }
    text = json.dumps(_finite(summary), indent=1, allow_nan=False, default=str)
    (out / "summary.json").write_text(text)
    emit(f"\nwrote {out / 'summary.json'} and each hospital's final model under {out}/*/models/")
    return summary


def _finite(value: Any) -> Any:
    """JSON has no NaN: an undefined metric (e.g. AUC of a one-class hold-out) becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value

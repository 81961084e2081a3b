"""The main job: encrypted FedAvg next to plaintext FedAvg, local-only and centralized training.

All four are evaluated on the same pooled hold-out (the union of the hospitals' patient-grouped
test splits), so the table compares like with like. Output goes through ``hefl.reporting``;
the hold-out's labels and each method's scores go to ``scores.npz`` (``hefl.holdout``) for the
report's curves. The federated rows are named by the run's server optimizer
(``encrypted FedAdam (CKKS)``; plain ``encrypted FedAvg (CKKS)`` by default).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np

from common.crypto import (
    open_aggregator,
    open_cipher,
    plain_aggregator,
    plain_cipher,
    run_key_ceremony,
)
from common.fedavg import training_seed
from common.model import initial_weights
from common.store import LocalStore, Store, open_store
from coordinator.state import RoundRecord, RunState
from hefl.baselines import pooled_baselines
from hefl.holdout import write_scores
from hefl.reporting import (
    CENTRALIZED,
    MEAN_ALONE,
    Emit,
    Row,
    alone,
    data_header,
    data_summary,
    federated_method,
    prepare_output,
    progress_line,
    results,
    write_summary,
)
from hefl.simulation import SimulationConfig, load_cohort, run_federated
from hospital_node.trainer import Trainer, TrainerFactory, keras_trainer


def train_alone(
    config: SimulationConfig, trainer: Trainer, x: np.ndarray, y: np.ndarray, name: str
) -> np.ndarray:
    """As many local epochs as a federated hospital gets over the whole run."""
    weights = initial_weights(config.model, x.shape[1], config.seed)
    for round_ in range(1, config.rounds + 1):
        weights = trainer.fit(weights, x, y, seed=training_seed(config.seed, round_, name)).weights
    return weights


def progress_printer(
    total_rounds: int, n_hospitals: int, emit: Emit
) -> Callable[[RoundRecord, RunState], None]:
    def show(record: RoundRecord, state: RunState) -> None:
        emit(
            progress_line(
                round_=record.round,
                rounds=total_rounds,
                contributed=len(record.accepted),
                hospitals=n_hospitals,
                metrics=record.model_metrics,
                seconds=record.seconds,
                uploaded=record.bytes_uploaded,
            )
        )

    return show


def run_comparison(
    config: SimulationConfig,
    *,
    emit: Emit = print,
    baselines: bool = True,
    trainer_for: TrainerFactory = keras_trainer,
) -> dict[str, Any]:
    """Run the whole comparison; write ``summary.json``, ``scores.npz`` and the models under
    ``config.out``."""
    out = prepare_output(config.out)
    cohort = load_cohort(config)
    for line in data_header(config, cohort):
        emit(line)
    x_test, y_test = cohort.pooled_test
    evaluator = trainer_for(config.model, cohort.n_features)
    keys = out / "keys"
    run_key_ceremony(config.he, keys / "hospital", keys / "coordinator")
    store: Store = open_store(config.store) if config.store else LocalStore(out / "store")
    rows: list[Row] = []
    runs: dict[str, Any] = {}
    holdout_scores: dict[str, np.ndarray] = {}

    def score(label: str, weights: np.ndarray, seconds: float, uploaded: int | None) -> Row:
        scores = evaluator.predict(weights, x_test)
        holdout_scores[label] = scores
        return Row.scored(
            label, y_test, scores, seconds, uploaded, top_fraction=config.top_fraction
        )

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
            trainer_for=trainer_for,
        )
        if result.summary["stopped"] == "early-stopping":
            emit(
                f"  stopped early after {result.summary['rounds_run']} rounds: the final model "
                f"is round {result.summary['final_round']}'s (lowest mean hold-out loss)"
            )
        rows.append(score(label, result.weights, result.seconds, result.bytes_uploaded))
        runs[run] = result.summary
        return result.weights

    server = config.model.server_optimizer.name
    encrypted = federated(
        federated_method("encrypted", server, scheme=config.he.scheme),
        "encrypted",
        lambda _name: open_cipher(keys / "hospital"),
        open_aggregator(keys / "coordinator"),
    )
    if baselines:
        plaintext = federated(
            federated_method("plaintext", server),
            "plaintext",
            lambda _name: plain_cipher(),
            plain_aggregator(),
        )
        runs["max_abs_weight_difference"] = float(np.max(np.abs(encrypted - plaintext)))
        local_rows = []
        for name, d in zip(cohort.names, cohort.data, strict=True):
            started = time.perf_counter()
            weights = train_alone(config, evaluator, d.x_train, d.y_train, name)
            local_rows.append(score(alone(name), weights, time.perf_counter() - started, None))
        rows.extend(local_rows)
        rows.append(
            Row(
                method=MEAN_ALONE,
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
        rows.append(score(CENTRALIZED, weights, time.perf_counter() - started, None))
        for baseline in pooled_baselines(x_train, y_train, x_test, seed=config.seed):
            holdout_scores[baseline.method] = baseline.scores
            rows.append(
                Row.scored(
                    baseline.method,
                    y_test,
                    baseline.scores,
                    baseline.seconds,
                    None,
                    top_fraction=config.top_fraction,
                )
            )
    for line in results(rows, y_test):
        emit(line)
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
        "data": data_summary(cohort),
    }
    path = write_summary(out, summary)
    scores_path = write_scores(
        out,
        y_test,
        holdout_scores,
        hospitals=cohort.names,
        test_rows=[len(d.y_test) for d in cohort.data],
    )
    emit(f"\nwrote {path}, {scores_path} and each hospital's final model under {out}/*/models/")
    return summary

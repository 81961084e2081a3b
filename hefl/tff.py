"""TensorFlow Federated as an independent reference engine, run in its own environment.

tensorflow-federated 0.87 pins tensorflow 2.14 and numpy 1.x, so it cannot live in the main
environment (TensorFlow 2.21, numpy 2). It gets its own virtual environment (``make tff-env``,
``tools/setup_tff_env.sh``) and this package never imports it. Instead:

1. :func:`export_inputs` writes the hospitals' training rows, the exact per-round row order our
   ``LocalTrainer`` uses (so TFF trains on the same batches), the seed-derived initial weights
   and the model settings to a folder;
2. :func:`run_tff_process` runs ``tff_engine/run_fedavg.py`` with the TFF environment's Python
   (``build_weighted_fed_avg``) and collects the global model after every round;
3. :func:`run_tff_engine` evaluates those models here, with our evaluator, on the same hold-outs
   as ``hefl.compare.run_comparison``, and writes the same summary format.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

import numpy as np

from common.crypto import Cipher
from common.errors import ConfigError, TrainingError
from common.fedavg import finite_metrics, mean_metrics, training_seed, weighted_average
from common.metrics import Metrics
from common.model import initial_weights, parameter_count, weight_shapes
from common.server_optimizer import (
    FEDYOGI,
    YOGI_INITIAL_PRECONDITIONER,
    ServerOptimizerConfig,
    global_models,
)
from common.store import Store
from hefl.reporting import (
    Emit,
    Row,
    data_header,
    federated_method,
    prepare_output,
    progress_line,
    results,
    write_summary,
)
from hefl.simulation import Cohort, SimulationConfig, load_cohort
from hospital_node.trainer import Trainer, TrainerFactory, epoch_orders, keras_trainer

REPO_ROOT: Final = Path(__file__).resolve().parents[1]
RUNNER: Final = REPO_ROOT / "tff_engine" / "run_fedavg.py"
DEFAULT_TFF_VENV: Final = REPO_ROOT / ".venv-tff"
# Overrides the TFF environment's location (a folder holding bin/python).
TFF_VENV_ENV: Final = "HEFL_TFF_VENV"
# Written by tools/setup_tff_env.sh once the environment passed its smoke check.
SETUP_STAMP: Final = ".hefl-tff-env"
# The whole TFF run (10 rounds on the full Diabetes-130 data take about a minute).
DEFAULT_TIMEOUT_SECONDS: Final = 1800.0
#: The result row of a plain FedAvg run (another server optimizer names its own: TFF FedAdam ...).
TFF_METHOD: Final = federated_method("tff")
PROGRESS_PREFIX: Final = "tff round"
DATA_FILE: Final = "data.npz"


class TffEngineError(TrainingError):
    """The TFF reference run failed, timed out, or left no usable output."""


def tff_python(venv: Path | None = None) -> Path:
    """The TFF environment's interpreter; a clear error when the environment is missing."""
    folder = venv or Path(os.environ.get(TFF_VENV_ENV, DEFAULT_TFF_VENV))
    python = folder / "bin" / "python"
    if not (python.exists() and (folder / SETUP_STAMP).exists()):
        raise ConfigError(
            f"TensorFlow Federated environment not found or incomplete ({folder}): run "
            f"`make tff-env` (or set {TFF_VENV_ENV} to an environment made by "
            "tools/setup_tff_env.sh)"
        )
    return python


def _supported(config: SimulationConfig) -> SimulationConfig:
    if config.model.optimizer != "sgd":
        raise ConfigError(
            f"the TFF engine reproduces client SGD only, not --optimizer {config.model.optimizer}"
        )
    if config.patience:
        raise ConfigError(
            "the TFF engine runs every round: --patience (early stopping) applies to the hefl "
            "engine only"
        )
    return config


def export_inputs(config: SimulationConfig, cohort: Cohort, folder: Path) -> None:
    """Write ``config.json`` and ``data.npz`` for ``tff_engine/run_fedavg.py``."""
    model = _supported(config).model
    folder.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {
        "initial_weights": initial_weights(model, cohort.n_features, config.seed)
    }
    for index, (name, data) in enumerate(zip(cohort.names, cohort.data, strict=True)):
        rows = len(data.y_train)
        arrays[f"x_{index}"] = np.asarray(data.x_train, dtype=np.float32)
        arrays[f"y_{index}"] = np.asarray(data.y_train, dtype=np.float32).reshape(-1)
        arrays[f"order_{index}"] = np.array(
            [
                epoch_orders(rows, model.local_epochs, training_seed(config.seed, round_, name))
                for round_ in range(1, config.rounds + 1)
            ],
            dtype=np.int32,
        )
    np.savez(folder / DATA_FILE, **arrays)  # type: ignore[arg-type]
    settings = {
        "hidden_units": list(model.hidden_units),
        "activation": model.activation,
        "learning_rate": model.learning_rate,
        "batch_size": model.batch_size,
        "local_epochs": model.local_epochs,
        "rounds": config.rounds,
        "hospitals": list(cohort.names),
        "n_features": cohort.n_features,
        "weight_shapes": [list(s) for s in weight_shapes(model, cohort.n_features)],
        "server_optimizer": {
            **model.server_optimizer.to_dict(),
            "initial_preconditioner": (
                YOGI_INITIAL_PRECONDITIONER if model.server_optimizer.name == FEDYOGI else None
            ),
        },
    }
    (folder / "config.json").write_text(json.dumps(settings, indent=1))


def run_tff_process(
    python: Path,
    input_dir: Path,
    output_dir: Path,
    *,
    log_path: Path,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    emit: Callable[[str], None] = print,
) -> None:
    """Run the TFF script to its exit, then end everything it left running.

    TFF starts a ``worker_binary`` that outlives Python and holds inherited stdout/stderr, so
    the script runs in a new session with its output in ``log_path`` (never a pipe), and its
    whole process group is killed once the script has exited or the timeout has passed.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    command = [str(python), str(RUNNER), str(input_dir), str(output_dir)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    deadline = time.monotonic() + timeout
    shown = 0
    try:
        while True:
            try:
                code = process.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                shown = _echo_progress(log_path, shown, emit)
                if time.monotonic() > deadline:
                    raise TffEngineError(
                        f"TFF run did not finish within {timeout:.0f} s; see {log_path}"
                    ) from None
        _echo_progress(log_path, shown, emit)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group is gone already
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    if code != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        raise TffEngineError(f"TFF run failed with exit code {code}; end of {log_path}:\n{tail}")


def _echo_progress(log_path: Path, shown: int, emit: Callable[[str], None]) -> int:
    lines = [
        line
        for line in log_path.read_text(errors="replace").splitlines()
        if line.startswith(PROGRESS_PREFIX)
    ]
    for line in lines[shown:]:
        emit(f"  {line}")
    return len(lines)


def read_outputs(output_dir: Path, rounds: int, n_params: int) -> tuple[np.ndarray, dict[str, Any]]:
    """The global model after each TFF round (rounds x parameters) and TFF's own metrics."""
    try:
        with np.load(output_dir / "weights.npz") as saved:
            weights = np.asarray(saved["rounds"], dtype=np.float32)
        metrics = json.loads((output_dir / "metrics.json").read_text())
    except (OSError, KeyError, ValueError) as exc:
        raise TffEngineError(f"TFF run left no usable output in {output_dir}: {exc}") from exc
    if weights.shape != (rounds, n_params) or not np.all(np.isfinite(weights)):
        raise TffEngineError(
            f"TFF weights have shape {weights.shape} (expected {(rounds, n_params)}) "
            "or non-finite values"
        )
    return weights, metrics


def round_weights_from_store(
    store: Store,
    aggregate_refs: Sequence[str],
    cipher: Cipher,
    initial: np.ndarray,
    server_optimizer: ServerOptimizerConfig,
) -> np.ndarray:
    """The global model after each round of one of our runs, decrypted from its aggregates.

    Each aggregate holds ``[sum of w*theta..., sum of w]``; dividing as every hospital does
    gives the round's average, and the run's server optimizer, stepped from the ``initial``
    model, the model the next round starts from (float32, as the hospitals train from it).
    """
    n_params = initial.shape[0]
    totals = (cipher.decrypt(store.get(ref)) for ref in aggregate_refs)
    averages = (weighted_average(total, n_params) for total in totals)
    models = global_models(initial, averages, server_optimizer)
    return np.stack(models).astype(np.float32)


def pooled_losses(
    evaluator: Trainer, round_weights: np.ndarray, x: np.ndarray, y: np.ndarray
) -> list[float]:
    """Loss of each round's global model on pooled rows: the cross-check's training loss."""
    return [evaluator.evaluate(weights, x, y).loss for weights in round_weights]


def _scores(metrics: Metrics) -> dict[str, float]:
    return {"auc": metrics.auc, "accuracy": metrics.accuracy, "loss": metrics.loss}


def run_tff_engine(
    config: SimulationConfig,
    *,
    emit: Emit = print,
    venv: Path | None = None,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    trainer_for: TrainerFactory = keras_trainer,
) -> dict[str, Any]:
    """``simulate --engine tff``: TFF's weighted FedAvg on our partitions, our summary format."""
    python = tff_python(venv)  # both checked before anything is written
    out = prepare_output(_supported(config).out)
    cohort = load_cohort(config)
    for line in data_header(config, cohort):
        emit(line)
    work = out / "tff"
    method = federated_method("tff", config.model.server_optimizer.name)
    emit(f"{method}: tensorflow-federated in {python.parent.parent}, log {work / 'tff.log'}")
    started = time.perf_counter()
    try:
        export_inputs(config, cohort, work / "input")
        run_tff_process(
            python,
            work / "input",
            work / "output",
            log_path=work / "tff.log",
            timeout=timeout,
            emit=emit,
        )
    finally:  # the export holds every hospital's training rows: keep only the settings
        (work / "input" / DATA_FILE).unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    evaluator = trainer_for(config.model, cohort.n_features)
    n_params = parameter_count(config.model, cohort.n_features)
    weights, tff_metrics = read_outputs(work / "output", config.rounds, n_params)
    x_train, y_train = cohort.pooled_train
    train_losses = pooled_losses(evaluator, weights, x_train, y_train)
    records = []
    for index, (round_weights, tff_record) in enumerate(
        zip(weights, tff_metrics["rounds"], strict=True)
    ):
        by_hospital = {
            name: finite_metrics(_scores(evaluator.evaluate(round_weights, d.x_test, d.y_test)))
            for name, d in zip(cohort.names, cohort.data, strict=True)
        }
        mean = mean_metrics(list(by_hospital.values())) or {}
        records.append(
            {
                "round": index + 1,
                "accepted": list(cohort.names),
                "failed": [],
                "seconds": tff_record["seconds"],
                "bytes_uploaded": None,
                "pooled_train_loss": train_losses[index],
                "tff_train_loss": tff_record["tff_train_loss"],
                "tff_num_examples": tff_record["tff_num_examples"],
                "holdout_metrics_mean": mean,
                "holdout_metrics_by_hospital": by_hospital,
            }
        )
        emit(
            progress_line(
                round_=index + 1,
                rounds=config.rounds,
                contributed=len(cohort.names),
                hospitals=len(cohort.names),
                metrics=mean,
                seconds=tff_record["seconds"],
                uploaded=None,
            )
        )
    x_test, y_test = cohort.pooled_test
    scores = evaluator.predict(weights[-1], x_test)
    rows = [Row.scored(method, y_test, scores, seconds, None, top_fraction=config.top_fraction)]
    for line in results(rows, y_test):
        emit(line)
    summary = {
        "config": {"engine": "tff", **config.describe(), "he": None},
        "n_features": cohort.n_features,
        "parameters": n_params,
        "upload": None,
        "results": [asdict(r) for r in rows],
        "runs": {
            "tff": {
                "run": "tff",
                "phase": "done",
                "versions": tff_metrics.get("versions", {}),
                "rounds": records,
            }
        },
    }
    path = write_summary(out, summary)
    emit(f"\nwrote {path}; TFF's settings, log and weights are under {work}/")
    return summary

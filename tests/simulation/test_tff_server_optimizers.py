"""Cross-check of the server optimizers: our encrypted FedAvgM, FedAdam, FedYogi against TFF's.

The same setup as ``test_tff_crosscheck.py`` (same partitions, initial weights and batches; TFF
in its own environment, failing rather than skipping when that is missing), on a smaller run: the
first 20,000 encounters of Diabetes-130, 4 hospitals, 4 rounds, Dense 16, one local epoch, CKKS
with the 56-bit prime. TFF runs ``build_weighted_fed_avg`` with ``server_optimizer_fn`` =
``build_sgdm(lr, momentum)``, ``build_adam(lr, beta_1, beta_2, epsilon)`` or ``build_yogi``;
our hospitals apply ``common.server_optimizer`` to each decrypted average. The per-round training
loss (of each round's global model on the pooled training rows, by our evaluator) must agree
within the cross-check's 1e-4. Measured on the 2-core machine: FedAvgM (lr 1, momentum 0.9)
3.3e-7 apart at most and weights within 5e-7, FedAdam and FedYogi 4.5e-8 and 6e-8. The same
aggregates read as plain FedAvg (the average as the global model) miss TFF's losses by 1e-3 to
0.14, so the tolerance tells the algorithms apart. About 30 seconds per optimizer.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common.crypto import HEConfig, ckks_parameters, open_cipher
from common.data.sources import DEFAULT_DATASET
from common.errors import ConfigError
from common.model import ModelConfig, initial_weights
from common.server_optimizer import DEFAULT_SERVER_CONFIG, ServerOptimizerConfig
from common.store import LocalStore
from hefl.compare import run_comparison
from hefl.simulation import SimulationConfig, load_cohort
from hefl.tff import (
    pooled_losses,
    read_outputs,
    round_weights_from_store,
    run_tff_engine,
    tff_python,
)
from hospital_node.training import LocalTrainer

LOSS_TOLERANCE = 1e-4  # as test_tff_crosscheck.py
# These hospitals hold 16,000 training rows, too few for the default 36-bit prime to keep the
# average exact (docs/encoding.md): its noise alone moved the loss by up to 1e-4 from run to run.
PRIME_BITS = 56
ROWS = 20_000
OPTIMIZERS = {
    "fedavgm": ServerOptimizerConfig(name="fedavgm", learning_rate=1.0, momentum=0.9),
    "fedadam": ServerOptimizerConfig(name="fedadam", learning_rate=0.01),
    "fedyogi": ServerOptimizerConfig(name="fedyogi", learning_rate=0.01),
}


def first_rows(folder: Path, rows: int) -> Path:
    """The header and the first ``rows`` encounters of the bundled data, as a CSV."""
    path = folder / "diabetes130-head.csv"
    with gzip.open(DEFAULT_DATASET, "rt", encoding="utf-8") as source, path.open("w") as out:
        for index, line in enumerate(source):
            if index > rows:
                break
            out.write(line)
    return path


def run_both(root: Path, server: ServerOptimizerConfig) -> dict[str, Any]:
    try:
        tff_python()
    except ConfigError as exc:  # fail, never skip: CI must install the TFF environment
        pytest.fail(f"the TFF cross-check cannot run: {exc}", pytrace=False)
    model = ModelConfig(hidden_units=(16,), local_epochs=1, server_optimizer=server)
    config = SimulationConfig(
        dataset=first_rows(root, ROWS),
        out=root / "hefl",
        rounds=4,
        model=model,
        he=HEConfig(**ckks_parameters(PRIME_BITS)),
    )
    ours = run_comparison(config, emit=lambda _line: None, baselines=False)
    tff = run_tff_engine(replace(config, out=root / "tff"), emit=lambda _line: None)
    cohort = load_cohort(config)
    evaluator = LocalTrainer(config.model, cohort.n_features)
    refs = [record["aggregate"] for record in ours["runs"]["encrypted"]["rounds"]]
    start = initial_weights(model, cohort.n_features, config.seed)
    store = LocalStore(config.out / "store")
    cipher = open_cipher(config.out / "keys" / "hospital")
    x_train, y_train = cohort.pooled_train

    def losses(as_run: ServerOptimizerConfig) -> list[float]:
        weights = round_weights_from_store(store, refs, cipher, start, as_run)
        return pooled_losses(evaluator, weights, x_train, y_train)

    settings = root / "tff" / "tff" / "input" / "config.json"  # what TFF was given
    tff_weights, _ = read_outputs(
        root / "tff" / "tff" / "output", config.rounds, evaluator.parameter_count
    )
    our_weights = round_weights_from_store(store, refs, cipher, start, server)
    return {
        "rounds": config.rounds,
        "ours": losses(server),
        "as_plain_fedavg": losses(DEFAULT_SERVER_CONFIG),
        "tff": [record["pooled_train_loss"] for record in tff["runs"]["tff"]["rounds"]],
        "tff_settings": json.loads(settings.read_text())["server_optimizer"],
        "max_weight_difference": float(np.max(np.abs(our_weights - tff_weights))),
    }


@pytest.mark.slow
@pytest.mark.parametrize(  # `make test` checks FedAdam; `make test-long` the other two too
    "name",
    [
        pytest.param("fedavgm", marks=pytest.mark.long),
        "fedadam",
        pytest.param("fedyogi", marks=pytest.mark.long),
    ],
)
def test_our_server_optimizer_matches_tffs_round_by_round(tmp_path: Path, name: str) -> None:
    server = OPTIMIZERS[name]
    result = run_both(tmp_path, server)
    given = result["tff_settings"]
    assert {key: given[key] for key in server.to_dict()} == server.to_dict()
    ours, tff = result["ours"], result["tff"]
    assert len(ours) == len(tff) == result["rounds"]
    differences = [abs(a - b) for a, b in zip(ours, tff, strict=True)]
    assert max(differences) <= LOSS_TOLERANCE, differences
    assert ours[-1] < ours[0]  # training made progress, so agreeing means something
    assert result["max_weight_difference"] < 1e-4  # the same models, not merely close scores
    # The same aggregates taken as plain FedAvg's global models are far from TFF's: the
    # tolerance tells a server optimizer from none.
    misses = [abs(a - b) for a, b in zip(result["as_plain_fedavg"], tff, strict=True)]
    assert max(misses) > 10 * LOSS_TOLERANCE, misses

"""The main job's promise on the full Diabetes-130 data, with the demo's defaults.

4 hospitals split by Dirichlet label skew, 10 rounds: encrypted FedAvg must match plaintext
FedAvg (AUC within 0.0005, with the default 36-bit prime) and come within 0.02 AUC of
centralized training on the pooled data, and the seeded CKKS upload must stay within 5.5 bytes
per model parameter. Takes about two minutes.
"""

from __future__ import annotations

import pytest

from common.crypto import HEConfig
from common.data.sources import DEFAULT_DATASET
from hefl.compare import run_comparison
from hefl.simulation import SimulationConfig

DATA = DEFAULT_DATASET


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    config = SimulationConfig(dataset=DATA, out=tmp_path_factory.mktemp("acceptance") / "out")
    return run_comparison(config, emit=lambda _line: None)


def _auc(summary: dict, method: str) -> float:
    return next(row["auc"] for row in summary["results"] if row["method"] == method)


@pytest.mark.slow
def test_encrypted_fedavg_matches_plaintext_and_approaches_centralized(results: dict) -> None:
    encrypted = _auc(results, "encrypted FedAvg (CKKS)")
    assert abs(encrypted - _auc(results, "plaintext FedAvg")) <= 0.0005
    assert abs(encrypted - _auc(results, "centralized (pooled data)")) <= 0.02
    assert encrypted > _auc(results, "mean of hospitals alone")


@pytest.mark.slow
def test_ckks_upload_is_at_most_5_5_bytes_per_parameter(results: dict) -> None:
    assert results["config"]["he"] == HEConfig().to_dict()
    uploads = results["runs"]["encrypted"]["rounds"][0]
    per_hospital = uploads["bytes_uploaded"] / len(uploads["accepted"])
    assert per_hospital / results["parameters"] <= 5.5
    assert results["upload"]["bytes_per_parameter"] == per_hospital / results["parameters"]

"""The embedded simulation with the Drive store gives the same model as with the local store.

The fake Drive runs in this process (a thread); the store talks to it over HTTP through
googleapiclient, so every blob and every state file of the run crosses the real client.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest

from common.bundle import BUNDLE_DIR, MODEL_FILE
from common.crypto import plain_aggregator, plain_cipher
from common.data.sources import DEFAULT_DATASET
from common.model import ModelConfig
from common.protocol import layout
from common.store import LocalStore
from hefl.cli import main
from hefl.simulation import SimulationConfig, load_cohort, run_federated
from testkit.cluster import sample_csv as whole_patients
from testkit.drive.helpers import drive_store, new_root, service_account_file, shared_fake

DATA = DEFAULT_DATASET
HOSPITALS = ("hospital-1", "hospital-2", "hospital-3")


@pytest.fixture(scope="module")
def sample_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded sample of whole patients (so patient grouping still means something)."""
    return whole_patients(tmp_path_factory.mktemp("data") / "sample.csv", patients=3000, seed=11)


def test_plaintext_fedavg_on_drive_is_bitwise_the_local_result(
    sample_csv: Path, tmp_path: Path
) -> None:
    config = SimulationConfig(
        dataset=sample_csv, hospitals=3, rounds=2, seed=5, model=ModelConfig(hidden_units=(8,))
    )
    cohort = load_cohort(config)

    def run(store: object, out: str) -> object:
        return run_federated(
            replace(config, out=tmp_path / out),
            cohort,
            run="plain",
            cipher_for=lambda _name: plain_cipher(),
            aggregator=plain_aggregator(),
            store=store,  # type: ignore[arg-type]
        )

    local_store = LocalStore(tmp_path / "local-store")
    local = run(local_store, "local")
    drive = drive_store(tmp_path, multipart_limit=5 * 1024 * 1024, page_size=1000)
    remote = run(drive, "drive")
    assert np.array_equal(local.weights, remote.weights)  # type: ignore[attr-defined]
    assert _untimed(remote.summary) == _untimed(local.summary)  # type: ignore[attr-defined]
    assert drive.list() == local_store.list()
    assert layout.aggregate_key("plain", 2) in drive.list()
    # a second simulation on the same Drive folder starts afresh instead of resuming a done run
    again = run(drive, "drive-again")
    assert np.array_equal(again.weights, local.weights)  # type: ignore[attr-defined]
    assert drive.list() == local_store.list()


def _untimed(summary: dict) -> list[dict]:
    """Round records without wall times: accepted hospitals, bytes, losses and metrics."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in summary["rounds"]]


def _final_weights(out: Path) -> list[np.ndarray]:
    model = keras.models.load_model(
        out / "encrypted" / "models" / "hospital-1" / BUNDLE_DIR / MODEL_FILE
    )
    return [np.asarray(w) for w in model.get_weights()]


def test_hefl_simulate_with_a_drive_store_url_matches_the_local_store(
    sample_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    common_args = ["simulate", "--dataset", str(sample_csv), "--hospitals", "3", "--rounds", "2"]
    common_args += ["--hidden", "8", "--seed", "5", "--no-baselines"]
    common_args += ["--ckks-prime-bits", "56"]  # two runs of a tiny sample: equal to 1e-3
    assert main([*common_args, "--out", str(tmp_path / "local")]) == 0

    drive = shared_fake()
    root = new_root(drive)
    monkeypatch.setenv("HEFL_GDRIVE_CREDENTIALS", str(service_account_file(drive, tmp_path)))
    url = f"gdrive://{root}?endpoint={drive.url}"
    assert main([*common_args, "--out", str(tmp_path / "drive"), "--store", url]) == 0

    local = json.loads((tmp_path / "local" / "summary.json").read_text())["results"][0]
    remote = json.loads((tmp_path / "drive" / "summary.json").read_text())["results"][0]
    assert local["method"] == remote["method"] == "encrypted FedAvg (CKKS)"
    assert abs(local["auc"] - remote["auc"]) <= 1e-3
    for a, b in zip(
        _final_weights(tmp_path / "local"), _final_weights(tmp_path / "drive"), strict=True
    ):
        assert np.max(np.abs(a - b)) <= 1e-3
    # the run lives in Drive, one subfolder per run, and not in the local output folder
    assert not (tmp_path / "drive" / "store").exists()
    assert drive.path_of(root, layout.public_summary_key("encrypted")) is not None
    assert drive.path_of(root, layout.aggregate_key("encrypted", 2)) is not None
    for hospital in HOSPITALS:  # each update was deleted once its round's aggregate was written
        assert drive.path_of(root, layout.update_key("encrypted", 2, hospital)) is None

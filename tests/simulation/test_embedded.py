"""The embedded main job end to end on a sample of Diabetes-130 (real Keras, real Pyfhel)."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from common.bundle import BUNDLE_DIR, read_bundle
from common.crypto import HEConfig, ckks_parameters
from common.data.sources import DEFAULT_DATASET
from common.model import ModelConfig
from hefl.cli import main
from hefl.compare import run_comparison
from hefl.holdout import SCORES_FILE, read_scores
from hefl.report import REPORT_FILE, load_run
from hefl.simulation import SimulationConfig
from testkit.cluster import sample_csv as whole_patients

DATA = DEFAULT_DATASET


@pytest.fixture(scope="module")
def sample_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded sample of whole patients (so patient grouping still means something)."""
    return whole_patients(tmp_path_factory.mktemp("data") / "sample.csv", patients=5000, seed=7)


@pytest.fixture(scope="module")
def comparison(
    sample_csv: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict, Path, list[str]]:
    out = tmp_path_factory.mktemp("run") / "out"
    lines: list[str] = []
    config = SimulationConfig(
        dataset=sample_csv,
        hospitals=3,
        rounds=2,
        seed=3,
        out=out,
        model=ModelConfig(hidden_units=(16,)),
        # A sample of a few hundred rows: the 56-bit chain keeps the average exact (the default's
        # precision on the full data: tests/simulation/test_acceptance.py, docs/encoding.md).
        he=HEConfig(**ckks_parameters(56)),
    )
    summary = run_comparison(config, emit=lines.append)
    return summary, out, lines


def test_encrypted_and_plaintext_fedavg_reach_the_same_model(comparison: tuple) -> None:
    summary, _, _ = comparison
    # CKKS noise (~1e-8 at 56 bits) perturbs float32 training slightly: the same model.
    assert summary["runs"]["max_abs_weight_difference"] <= 1e-3
    results = {row["method"]: row for row in summary["results"]}
    encrypted = results["encrypted FedAvg (CKKS)"]
    assert abs(encrypted["auc"] - results["plaintext FedAvg"]["auc"]) <= 1e-3
    assert encrypted["bytes_uploaded"] > 0
    assert results["plaintext FedAvg"]["bytes_uploaded"] > 0


def test_table_lists_every_method_and_a_progress_line_per_round(comparison: tuple) -> None:
    summary, _, lines = comparison
    methods = [row["method"] for row in summary["results"]]
    assert methods == [
        "encrypted FedAvg (CKKS)",
        "plaintext FedAvg",
        "hospital-1 alone",
        "hospital-2 alone",
        "hospital-3 alone",
        "mean of hospitals alone",
        "centralized (pooled data)",
        "logistic regression (pooled data)",
        "gradient boosting (pooled data)",
    ]
    progress = [line for line in lines if line.strip().startswith("round ")]
    assert len(progress) == 4  # two rounds, two federated runs
    assert all("hospitals 3/3" in line for line in progress)
    header = next(line for line in lines if line.startswith("method"))
    for column in ("AUC (95% CI)", "AP", "Brier", "slope", "sens@top10%", "PPV@top10%"):
        assert column in header, column
    assert "accuracy" not in header  # 11 % positives: accuracy says nothing


def test_every_scored_row_carries_its_clinical_metrics(comparison: tuple) -> None:
    summary, _, emitted = comparison
    rows = {row["method"]: row for row in summary["results"]}
    lines = "\n".join(emitted).splitlines()  # the table is emitted as one block
    header = next(i for i, line in enumerate(lines) if line.startswith("method"))
    table = lines[header + 2 :]
    for method, row in rows.items():
        if method == "mean of hospitals alone":
            assert row["clinical"] is None
            continue
        clinical = row["clinical"]
        assert clinical["auc"] == pytest.approx(row["auc"], abs=1e-9), method
        assert clinical["auc_low"] <= row["auc"] <= clinical["auc_high"], method
        assert 0 <= clinical["brier"] <= 1 and 0 <= clinical["average_precision"] <= 1
        assert clinical["top_fraction"] == 0.10 and 0 <= clinical["sensitivity"] <= 1
        shown = next(line for line in table if line.startswith(method))
        assert f"[{clinical['auc_low']:.4f}, {clinical['auc_high']:.4f}]" in shown, shown


def test_every_round_is_summarized_with_holdout_metrics(comparison: tuple) -> None:
    summary, _, _ = comparison
    run = summary["runs"]["encrypted"]
    assert run["phase"] == "done"
    assert [r["round"] for r in run["rounds"]] == [1, 2]
    for record in run["rounds"]:
        assert record["accepted"] == ["hospital-1", "hospital-2", "hospital-3"]
        metrics = record["holdout_metrics_mean"]
        assert 0.0 <= metrics["auc"] <= 1.0 and metrics["loss"] > 0
        by_hospital = record["holdout_metrics_by_hospital"]
        assert sorted(by_hospital) == ["hospital-1", "hospital-2", "hospital-3"]
        mean_loss = sum(m["loss"] for m in by_hospital.values()) / 3
        assert mean_loss == pytest.approx(metrics["loss"])
        assert record["attempts"] == 1  # masked: one participant set, nobody dropped
    assert run["rejected"] == {}
    assert summary["config"]["masking"] is True
    assert all(r["attempts"] == 0 for r in summary["runs"]["plaintext"]["rounds"])  # no masks


def test_the_output_says_whether_uploads_are_masked(comparison: tuple) -> None:
    _, _, lines = comparison
    assert "encrypted uploads carry pairwise masks (each one alone decrypts to noise)" in lines


def test_each_hospital_keeps_a_loadable_model_bundle(comparison: tuple) -> None:
    _, out, _ = comparison
    for hospital in ("hospital-1", "hospital-2", "hospital-3"):
        bundle = read_bundle(out / "encrypted" / "models" / hospital / BUNDLE_DIR)
        model = keras.models.load_model(bundle.model_file)
        assert model.count_params() > 0
        assert (bundle.manifest.hospital, bundle.manifest.run) == (hospital, "encrypted")
        assert 0.0 <= bundle.manifest.holdout["auc"] <= 1.0
        assert bundle.manifest.he["scheme"] == "ckks"
    written = json.loads((out / "summary.json").read_text())
    assert written["parameters"] == written["n_features"] * 16 + 16 + 16 + 1


def test_cli_simulate_runs_bfv_without_baselines(sample_csv: Path, tmp_path: Path, capsys) -> None:
    code = main(
        [
            "simulate",
            "--dataset",
            str(sample_csv),
            "--hospitals",
            "3",
            "--rounds",
            "1",
            "--hidden",
            "8",
            "--scheme",
            "bfv",
            "--no-baselines",
            "--no-masking",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "encrypted FedAvg (BFV)" in printed
    assert "encrypted uploads without pairwise masks (--no-masking)" in printed
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["config"]["masking"] is False
    assert summary["runs"]["encrypted"]["rounds"][0]["attempts"] == 0
    assert len(summary["results"]) == 1
    assert np.isfinite(summary["results"][0]["auc"])


def test_the_federated_rows_name_the_server_optimizer_the_run_used(
    sample_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A FedAdam run is not called FedAvg: not in the table, ``summary.json``, ``scores.npz``,
    nor in the report's table and per-round legends."""
    out = tmp_path / "o"
    argv = ["simulate", "--dataset", str(sample_csv), "--hospitals", "3", "--rounds", "1"]
    argv += ["--hidden", "8", "--local-epochs", "1", "--no-masking", "--out", str(out)]
    assert main([*argv, "--server-optimizer", "fedadam"]) == 0
    printed = capsys.readouterr().out
    federated = ["encrypted FedAdam (CKKS)", "plaintext FedAdam"]
    assert "encrypted FedAdam (CKKS):" in printed and "plaintext FedAdam:" in printed
    summary = json.loads((out / "summary.json").read_text())
    methods = [row["method"] for row in summary["results"]]
    assert methods[:2] == federated
    assert not any("FedAvg" in method for method in methods), methods
    assert read_scores(out / SCORES_FILE).methods[:2] == tuple(federated)
    assert list(load_run(out).rounds) == federated  # the per-round plots' legends
    report = (out / REPORT_FILE).read_text()
    assert all(f"<td>{method}</td>" in report for method in federated)
    assert "FedAvg (" not in report and "plaintext FedAvg" not in report


def test_cli_reports_a_bad_csv_with_its_exit_code(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("")
    code = main(["simulate", "--dataset", str(bad), "--out", str(tmp_path / "o")])
    assert code == 3
    assert "bad.csv" in capsys.readouterr().err


def test_simulate_refuses_to_replace_a_folder_it_did_not_write(tmp_path: Path, capsys) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    code = main(["simulate", "--dataset", str(tmp_path / "x.csv"), "--out", str(precious)])
    assert code == 2
    assert "not written by hefl" in capsys.readouterr().err
    assert (precious / "notes.txt").read_text() == "keep me"


def test_simulate_flag_defaults_are_the_model_defaults() -> None:
    from hefl.cli import build_parser

    args = build_parser().parse_args(["simulate"])
    model = ModelConfig()
    flags = (args.hidden, args.optimizer, args.learning_rate, args.batch_size, args.local_epochs)
    assert flags == (
        model.hidden_units,
        model.optimizer,
        model.learning_rate,
        model.batch_size,
        model.local_epochs,
    )
    assert (args.hospitals, args.rounds, args.partition, args.scheme) == (
        4,
        10,
        "dirichlet",
        "ckks",
    )

"""A hospital's model bundle and ``hefl predict``: the bundle scores rows exactly as training
did, refuses CSVs and bundles that do not fit, and the clinical metrics of the final model
reach the coordinator's summary; ``--top-fraction`` is validated and named in the table.

One small embedded run (plaintext cipher, one round, a tiny MLP on a sample of Diabetes-130)
writes the bundles every test here reads.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.bundle import (
    BUNDLE_DIR,
    MANIFEST_FILE,
    MODEL_FILE,
    SCHEMA_FILE,
    BundleSettings,
    read_bundle,
    write_bundle,
)
from common.clinical import clinical_metrics
from common.crypto import plain_aggregator, plain_cipher
from common.data import FeatureEncoder, load_schema, read_csv, schema_text
from common.errors import BundleError, ConfigError, DataError
from common.fedavg import CLINICAL_METRIC_NAMES
from common.metrics import Metrics
from common.model import ModelConfig
from common.store import InMemoryStore
from hefl.cli import build_parser, main
from hefl.reporting import Row, render_table
from hefl.simulation import Cohort, FederatedResult, SimulationConfig, load_cohort, run_federated
from hospital_node.training import LocalTrainer
from testkit.cluster import sample_csv

MODEL = ModelConfig(hidden_units=(4,), batch_size=64, local_epochs=1)
TOP = 0.2
HOSPITALS = ("hospital-1", "hospital-2", "hospital-3")


@dataclass(frozen=True)
class Run:
    config: SimulationConfig
    cohort: Cohort
    result: FederatedResult
    csv: Path

    def bundle(self, hospital: str = "hospital-1") -> Path:
        return self.config.out / "plain" / "models" / hospital / BUNDLE_DIR


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("bundle")
    csv = sample_csv(root / "sample.csv", patients=900, seed=3)
    config = SimulationConfig(
        dataset=csv,
        hospitals=3,
        partition="iid",
        rounds=1,
        seed=5,
        model=MODEL,
        out=root / "out",
        top_fraction=TOP,
    )
    cohort = load_cohort(config)
    result = run_federated(
        config,
        cohort,
        run="plain",
        cipher_for=lambda _name: plain_cipher(),
        aggregator=plain_aggregator(),
        store=InMemoryStore(),
    )
    return Run(config=config, cohort=cohort, result=result, csv=csv)


def predict(*args: str | Path) -> int:
    return main(["predict", *map(str, args)])


def copy_bundle(run: Run, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run.bundle(), tmp_path / "copy" / BUNDLE_DIR))


# -- scoring -------------------------------------------------------------------------------------


def test_predict_scores_every_row_as_the_model_scored_it_in_training(
    run: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "scores.csv"
    assert predict("--model", run.bundle(), "--csv", run.csv, "--out", out) == 0
    scores = pd.read_csv(out, dtype={"patient_nbr": str, "encounter_id": str})

    schema = load_schema("diabetes130")
    frame = read_csv(run.csv, schema)
    x, _ = FeatureEncoder(schema).transform(frame)
    expected = LocalTrainer(MODEL, x.shape[1]).predict(run.result.weights, x)
    assert list(scores.columns) == ["line", "patient_nbr", "encounter_id", "risk", "flagged"]
    assert scores["line"].tolist() == frame.index.tolist()
    assert scores["patient_nbr"].tolist() == frame["patient_nbr"].tolist()
    assert scores["encounter_id"].tolist() == frame["encounter_id"].tolist()
    np.testing.assert_allclose(scores["risk"].to_numpy(), expected, rtol=1e-7, atol=0)
    np.testing.assert_array_equal(scores["risk"].to_numpy().astype(np.float32), expected)
    threshold = read_bundle(run.bundle()).threshold
    assert scores["flagged"].tolist() == (scores["risk"] >= threshold).astype(int).tolist()
    assert 0 < scores["flagged"].sum() < len(scores)
    err = capsys.readouterr().err
    assert f"scored {len(scores)} rows of {run.csv}" in err and "top 20% of hospital-1" in err
    assert "rows:" not in err  # no progress bar when standard error is no terminal


def test_a_csv_without_the_target_column_scores_the_same_rows(
    run: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with_target = tmp_path / "with.csv"
    assert predict("--model", run.bundle(), "--csv", run.csv, "--out", with_target) == 0
    unlabelled = tmp_path / "discharges.csv"
    pd.read_csv(run.csv, dtype=str, keep_default_na=False).drop(columns="readmitted").to_csv(
        unlabelled, index=False
    )
    capsys.readouterr()
    assert predict("--model", run.bundle(), "--csv", unlabelled) == 0  # to standard output
    printed = pd.read_csv(io.StringIO(capsys.readouterr().out))
    pd.testing.assert_frame_equal(printed, pd.read_csv(with_target))


def test_the_bundle_threshold_flags_the_top_fraction_of_the_hospitals_hold_out(run: Run) -> None:
    bundle = read_bundle(run.bundle())
    held_out = run.cohort.data[0]
    scores = LocalTrainer(MODEL, run.cohort.n_features).predict(run.result.weights, held_out.x_test)
    expected = clinical_metrics(held_out.y_test, scores, top_fraction=TOP)
    assert bundle.threshold == expected.threshold
    assert bundle.manifest.clinical["ppv"] == expected.ppv
    assert bundle.manifest.top_fraction == TOP
    assert (bundle.manifest.run, bundle.manifest.rounds, bundle.manifest.seed) == ("plain", 1, 5)
    assert bundle.manifest.he == {"scheme": "plain"}
    assert bundle.model == MODEL
    assert (bundle.path / SCHEMA_FILE).read_text() == schema_text("diabetes130")


def test_a_renamed_column_is_refused_naming_the_file_and_the_column(
    run: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    renamed = tmp_path / "renamed.csv"
    frame = pd.read_csv(run.csv, dtype=str, keep_default_na=False)
    frame.rename(columns={"age": "age_bracket"}).to_csv(renamed, index=False)
    out = tmp_path / "scores.csv"
    assert predict("--model", run.bundle(), "--csv", renamed, "--out", out) == DataError.exit_code
    err = capsys.readouterr().err
    assert f"file {renamed}" in err and "column 'age'" in err
    assert not out.exists()


def test_a_bad_row_gets_the_located_error_training_gives(
    run: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.csv"
    frame = pd.read_csv(run.csv, dtype=str, keep_default_na=False)
    frame.loc[4, "num_lab_procedures"] = "many"
    frame.to_csv(broken, index=False)
    with pytest.raises(DataError) as training:
        read_csv(broken, load_schema("diabetes130"))
    assert predict("--model", run.bundle(), "--csv", broken) == DataError.exit_code
    err = capsys.readouterr().err
    assert err.strip() == f"error: {training.value}"
    assert "row 6" in err and "column 'num_lab_procedures'" in err and "'many'" in err


# -- refusing a bundle ---------------------------------------------------------------------------


def _append_a_byte(bundle: Path) -> None:
    with (bundle / MODEL_FILE).open("ab") as handle:
        handle.write(b"\0")


def _drop_the_schema(bundle: Path) -> None:
    (bundle / SCHEMA_FILE).unlink()


def _change_a_range_and_its_hash(bundle: Path) -> None:
    """A consistent forgery of the files' hashes: only the layout digest can tell."""
    schema = bundle / SCHEMA_FILE
    text = schema.read_text()
    assert "range: [1, 14]" in text
    schema.write_text(text.replace("range: [1, 14]", "range: [1, 30]"))
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    manifest["files"][SCHEMA_FILE] = hashlib.sha256(schema.read_bytes()).hexdigest()
    (bundle / MANIFEST_FILE).write_text(json.dumps(manifest))


def _break_the_manifest(bundle: Path) -> None:
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    manifest["threshold"] = "high"
    (bundle / MANIFEST_FILE).write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("tamper", "needle"),
    [
        (_append_a_byte, "model.keras was changed after the bundle was written"),
        (_drop_the_schema, "schema.yaml is missing from the bundle"),
        (_change_a_range_and_its_hash, "but the model was trained on"),
        (_break_the_manifest, "bundle.json: field threshold"),
    ],
)
def test_a_tampered_or_incomplete_bundle_is_refused(
    run: Run,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    tamper: Callable[[Path], None],
    needle: str,
) -> None:
    bundle = copy_bundle(run, tmp_path)
    read_bundle(bundle)  # the copy itself is fine
    tamper(bundle)
    with pytest.raises(BundleError, match=re.escape(needle)):
        read_bundle(bundle)
    assert predict("--model", bundle, "--csv", run.csv) == BundleError.exit_code
    err = capsys.readouterr()
    assert f"file {bundle}" in err.err and needle in err.err
    assert err.out == ""


def test_a_folder_without_a_bundle_is_refused(run: Run, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no model bundle here"):
        read_bundle(tmp_path / "nothing")
    with pytest.raises(BundleError, match=r"bundle\.json is missing"):
        read_bundle(tmp_path)


# -- writing a bundle ----------------------------------------------------------------------------


def test_a_failed_write_leaves_the_previous_bundle_whole_and_no_temporary_folder(
    run: Run, tmp_path: Path
) -> None:
    bundle = copy_bundle(run, tmp_path)
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}
    manifest = read_bundle(bundle).manifest

    def fail_midway(path: Path) -> None:
        path.write_bytes(b"half a model")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_bundle(bundle, manifest, schema_text("diabetes130"), fail_midway)
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before
    assert sorted(p.name for p in bundle.parent.iterdir()) == [BUNDLE_DIR]


def test_a_rewritten_bundle_replaces_the_old_one_whole(run: Run, tmp_path: Path) -> None:
    bundle = copy_bundle(run, tmp_path)
    model = (bundle / MODEL_FILE).read_bytes()
    manifest = read_bundle(bundle).manifest
    write_bundle(bundle, manifest, schema_text("diabetes130"), lambda p: p.write_bytes(model))
    assert read_bundle(bundle).manifest == manifest
    assert sorted(p.name for p in bundle.parent.iterdir()) == [BUNDLE_DIR]


def test_bundle_settings_refuse_a_schema_that_does_not_fit_the_model(run: Run) -> None:
    settings = BundleSettings(schema_text=schema_text("johns_hospital"), model=MODEL, he={})
    bundle = read_bundle(run.bundle())
    scores = np.linspace(0.0, 1.0, 10)
    with pytest.raises(ConfigError, match="was the schema file changed"):
        settings.manifest(
            hospital="hospital-1",
            run="plain",
            rounds=1,
            seed=5,
            config_digest="d",
            parameters=run.result.weights.size,
            holdout=Metrics.from_dict(bundle.manifest.holdout),
            clinical=clinical_metrics(np.arange(10) % 2, scores, top_fraction=0.1),
        )


def test_the_manifest_names_the_round_whose_model_is_final(run: Run, tmp_path: Path) -> None:
    """Early stopping keeps an earlier round's model: round 4's of 7 run. A bundle written
    before early stopping has no final_round and reads as the last round's."""
    bundle = copy_bundle(run, tmp_path)
    old = read_bundle(bundle).manifest
    assert (old.rounds, old.final_round) == (1, 1)
    settings = BundleSettings(
        schema_text=schema_text("diabetes130"), model=MODEL, he=old.he, top_fraction=TOP
    )
    facts = {
        "hospital": old.hospital,
        "run": old.run,
        "rounds": 7,
        "seed": old.seed,
        "config_digest": old.config_digest,
        "parameters": run.result.weights.size,
        "holdout": Metrics.from_dict(old.holdout),
        "clinical": clinical_metrics(np.arange(10) % 2, np.linspace(0, 1, 10), top_fraction=TOP),
    }
    model = (bundle / MODEL_FILE).read_bytes()
    write_bundle(
        bundle,
        settings.manifest(**facts, final_round=4),
        schema_text("diabetes130"),
        lambda path: path.write_bytes(model),
    )
    written = json.loads((bundle / MANIFEST_FILE).read_text())
    assert (written["rounds"], written["final_round"]) == (7, 4)
    assert read_bundle(bundle).manifest.final_round == 4
    assert settings.manifest(**facts).final_round == 7  # not given: the last round's model
    with pytest.raises(ConfigError, match="final round 8 is not one of the 7 rounds run"):
        settings.manifest(**facts, final_round=8)

    del written["final_round"]
    (bundle / MANIFEST_FILE).write_text(json.dumps(written))
    assert read_bundle(bundle).manifest.final_round == 7
    (bundle / MANIFEST_FILE).write_text(json.dumps({**written, "final_round": 8}))
    with pytest.raises(BundleError, match="final_round 8 is not one of the 7 rounds run"):
        read_bundle(bundle)


# -- clinical metrics in the coordinator's summary ----------------------------------------------


def test_each_hospitals_clinical_metrics_reach_the_coordinators_summary(run: Run) -> None:
    final = run.result.summary["rounds"][-1]["holdout_metrics_by_hospital"]
    assert set(final) == set(HOSPITALS)
    for hospital in HOSPITALS:
        reported = final[hospital]
        clinical = read_bundle(run.bundle(hospital)).manifest.clinical
        assert {"auc", "loss", "accuracy", "average_precision", "brier"} <= set(reported)
        for name in CLINICAL_METRIC_NAMES:
            if clinical[name] is not None:
                assert reported[name] == clinical[name], name
        assert reported["top_fraction"] == TOP
        assert "rows" not in reported and "positives" not in reported  # no dataset sizes
    mean = run.result.summary["rounds"][-1]["holdout_metrics_mean"]
    assert set(mean) == {"auc", "accuracy", "loss"}


# -- --top-fraction ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.1", "ten"])
def test_top_fraction_outside_zero_to_one_is_refused(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    hospital = ["hospital", "--hospital", "h", "--csv", "c"]
    for argv in (["simulate"], hospital):
        with pytest.raises(SystemExit) as exit_:
            build_parser({}).parse_args([*argv, "--top-fraction", value])
        assert exit_.value.code == 2
        assert "argument --top-fraction" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser({"HEFL_TOP_FRACTION": value})
    assert "HEFL_TOP_FRACTION" in capsys.readouterr().err


def test_top_fraction_is_parsed_for_the_commands_that_show_results() -> None:
    parser = build_parser({"HEFL_TOP_FRACTION": "0.05"})
    assert parser.parse_args(["simulate"]).top_fraction == 0.05
    hospital = ["hospital", "--hospital", "h", "--csv", "c", "--top-fraction", "0.3"]
    assert parser.parse_args(hospital).top_fraction == 0.3
    assert build_parser({}).parse_args(["simulate"]).top_fraction == 0.1


@pytest.mark.parametrize("value", [0.0, 1.0, 2.0, float("nan"), True])
def test_configs_refuse_a_top_fraction_outside_zero_to_one(value: float, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="between 0 and 1"):
        SimulationConfig(dataset=tmp_path, top_fraction=value)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        BundleSettings(schema_text="", model=MODEL, he={}, top_fraction=value)


def test_the_table_names_the_flagged_fraction() -> None:
    labels = np.arange(200) % 5 == 0
    scores = np.linspace(0.01, 0.99, 200)
    row = Row.scored("m", labels, scores, 1.0, None, top_fraction=0.125)
    header = render_table([row]).splitlines()[0]
    assert "sens@top12.5%" in header and "PPV@top12.5%" in header
    assert row.clinical is not None and row.clinical["top_fraction"] == 0.125

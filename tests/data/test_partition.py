"""Partitioning into simulated hospitals and train/test splits, always by patient."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from common.data import (
    home_values,
    load_schema,
    parse_frame,
    partition,
    read_csv,
    read_raw,
    split_by_patient,
    write_partitions,
)
from common.data.schema import Schema
from common.data.sources import shared_data_dir
from common.errors import ConfigError, DataError

DATA = shared_data_dir()
DIABETES = DATA / "diabetes130" / "diabetic_data.csv.gz"
JOHNS = DATA / "seed" / "johns_hospital_data.csv"
PID, LABEL = "patient_nbr", "readmitted"


@pytest.fixture(scope="module")
def diabetes() -> tuple[Schema, pd.DataFrame]:
    """The whole Diabetes-130 file, read once for this module."""
    schema = load_schema("diabetes130")
    return schema, read_csv(DIABETES, schema)


def positive_rates(parts: list[pd.DataFrame]) -> list[float]:
    return [float(part[LABEL].mean()) for part in parts]


def assert_valid_partition(frame: pd.DataFrame, parts: list[pd.DataFrame], n: int) -> None:
    """Every row in exactly one hospital, no patient in two, each hospital both classes."""
    assert len(parts) == n
    combined = pd.concat(parts)
    assert combined.index.is_unique
    assert sorted(combined.index) == sorted(frame.index)
    owners = combined.assign(hospital=[i for i, p in enumerate(parts) for _ in range(len(p))])
    assert owners.groupby(PID)["hospital"].nunique().max() == 1
    for part in parts:
        assert set(part[LABEL]) == {0, 1}
        assert part.index.is_monotonic_increasing


@pytest.mark.parametrize(
    "kwargs",
    [
        {"method": "iid"},
        {"method": "dirichlet", "alpha": 0.5},
        {"method": "dirichlet", "alpha": 0.05},
        {"method": "column", "column": "admission_source_id"},
        {"method": "column", "column": "payer_code"},
    ],
)
def test_every_method_assigns_each_row_once_and_each_patient_to_one_hospital(
    diabetes: tuple[Schema, pd.DataFrame], kwargs: dict[str, object]
) -> None:
    schema, frame = diabetes
    parts = partition(frame, schema, 4, seed=1, **kwargs)  # type: ignore[arg-type]
    assert_valid_partition(frame, parts, 4)


def test_partition_leaves_its_input_untouched(diabetes: tuple[Schema, pd.DataFrame]) -> None:
    schema, frame = diabetes
    before = frame.copy()
    partition(frame, schema, 3, method="dirichlet", seed=0)
    pd.testing.assert_frame_equal(frame, before)


def test_iid_hospitals_look_alike(diabetes: tuple[Schema, pd.DataFrame]) -> None:
    schema, frame = diabetes
    parts = partition(frame, schema, 4, method="iid", seed=0)
    rates = positive_rates(parts)
    assert max(rates) - min(rates) < 0.01
    patients = [part[PID].nunique() for part in parts]
    assert max(patients) - min(patients) <= 1


def test_small_alpha_skews_positive_rates(diabetes: tuple[Schema, pd.DataFrame]) -> None:
    schema, frame = diabetes
    for seed in range(3):
        skewed = positive_rates(partition(frame, schema, 4, alpha=0.1, seed=seed))
        assert max(skewed) - min(skewed) > 0.2, skewed
    mild = positive_rates(partition(frame, schema, 4, alpha=100.0, seed=0))
    assert max(mild) - min(mild) < 0.05


def test_same_seed_same_partition_other_seed_other_partition(
    diabetes: tuple[Schema, pd.DataFrame],
) -> None:
    schema, frame = diabetes
    for method in ("iid", "dirichlet"):
        first = partition(frame, schema, 3, method=method, seed=11)
        again = partition(frame, schema, 3, method=method, seed=11)
        other = partition(frame, schema, 3, method=method, seed=12)
        assert [list(p.index) for p in first] == [list(p.index) for p in again]
        assert [list(p.index) for p in first] != [list(p.index) for p in other]


def test_column_method_keeps_each_value_in_one_hospital(
    diabetes: tuple[Schema, pd.DataFrame],
) -> None:
    schema, frame = diabetes
    column = "admission_source_id"
    parts = partition(frame, schema, 4, method="column", column=column)
    owner: dict[str, int] = {}
    for number, part in enumerate(parts):
        for value in home_values(part, schema, column).unique():
            assert owner.setdefault(value, number) == number, value
    assert set(owner) == set(home_values(frame, schema, column))
    # greedy largest-first: Emergency Room (7) and Physician Referral (1) get hospitals of
    # their own, and each hospital's own values cover most of its rows
    assert {owner["7"], owner["1"]} == {0, 1}
    for number, part in enumerate(parts):
        own = {value for value, hospital in owner.items() if hospital == number}
        assert part[column].isin(own).mean() > 0.8
    again = partition(frame, schema, 4, method="column", column=column, seed=99)
    assert [list(p.index) for p in again] == [list(p.index) for p in parts]


def test_column_method_refuses_more_hospitals_than_values(
    diabetes: tuple[Schema, pd.DataFrame],
) -> None:
    schema, frame = diabetes
    with pytest.raises(DataError, match="distinct value") as caught:
        partition(frame, schema, 3, method="column", column="change")
    assert caught.value.column == "change"


def test_too_few_positive_patients_for_the_hospitals_is_a_data_error(
    diabetes: tuple[Schema, pd.DataFrame],
) -> None:
    schema, frame = diabetes
    positives = frame[PID][frame[LABEL] == 1].unique()[:2]
    negatives = frame[PID][frame.groupby(PID)[LABEL].transform("max") == 0].unique()[:10]
    small = frame[frame[PID].isin([*positives, *negatives])]
    assert_valid_partition(small, partition(small, schema, 2, method="iid"), 2)
    for method in ("iid", "dirichlet"):
        with pytest.raises(DataError, match="only 2 positive patient"):
            partition(small, schema, 3, method=method)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "random"}, "unknown partition method"),
        ({"method": "dirichlet", "alpha": 0.0}, "alpha"),
        ({"method": "column"}, "needs a column"),
        ({"method": "column", "column": "no_such_column"}, "not in the data"),
    ],
)
def test_bad_arguments_are_config_errors(
    diabetes: tuple[Schema, pd.DataFrame], kwargs: dict[str, object], message: str
) -> None:
    schema, frame = diabetes
    with pytest.raises(ConfigError, match=message):
        partition(frame, schema, 2, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="n_hospitals"):
        partition(frame, schema, 0)


def test_split_by_patient_has_no_patient_on_both_sides(
    diabetes: tuple[Schema, pd.DataFrame],
) -> None:
    schema, frame = diabetes
    train, test = split_by_patient(frame, schema, test_fraction=0.2, seed=5)
    assert set(train[PID]).isdisjoint(set(test[PID]))
    assert sorted([*train.index, *test.index]) == sorted(frame.index)
    assert len(test) / len(frame) == pytest.approx(0.2, abs=0.01)
    assert test[LABEL].mean() == pytest.approx(frame[LABEL].mean(), abs=0.01)
    again_train, _ = split_by_patient(frame, schema, test_fraction=0.2, seed=5)
    assert list(again_train.index) == list(train.index)
    with pytest.raises(ConfigError):
        split_by_patient(frame, schema, test_fraction=1.0)


def test_split_of_a_tiny_hospital_keeps_both_classes_on_both_sides(
    diabetes: tuple[Schema, pd.DataFrame],
) -> None:
    schema, frame = diabetes
    first_patients = frame[PID].unique()[:30]
    small = frame[frame[PID].isin(first_patients)]
    train, test = split_by_patient(small, schema, test_fraction=0.1)
    assert set(train[LABEL]) == set(test[LABEL]) == {0, 1}


def test_write_partitions_round_trips_raw_rows(tmp_path: Path) -> None:
    schema = load_schema("diabetes130")
    paths = write_partitions(DIABETES, schema, tmp_path / "out", 4, method="dirichlet", seed=3)
    assert [path.name for path in paths] == [f"hospital-{i}.csv" for i in range(1, 5)]
    manifest = json.loads((tmp_path / "out" / "partition.json").read_text())
    assert manifest["method"] == "dirichlet" and manifest["seed"] == 3
    assert manifest["alpha"] == 0.5 and manifest["column"] is None
    assert manifest["rows"] == 101_766
    original = read_raw(DIABETES)
    seen: set[str] = set()
    for path, entry in zip(paths, manifest["hospitals"], strict=True):
        frame = read_csv(path, schema)  # each file reads back with the same schema
        assert entry["rows"] == len(frame)
        assert entry["positive_rate"] == pytest.approx(frame[LABEL].mean(), abs=1e-6)
        assert seen.isdisjoint(frame[PID])
        seen.update(frame[PID])
        raw = read_raw(path)
        rows = original[original["encounter_id"].isin(raw["encounter_id"])]
        assert raw.to_numpy().tolist() == rows.to_numpy().tolist()  # raw text, "?" and all
    assert sum(entry["rows"] for entry in manifest["hospitals"]) == 101_766


def test_write_partitions_by_column_records_the_values(tmp_path: Path) -> None:
    schema = load_schema("johns_hospital")
    paths = write_partitions(JOHNS, schema, tmp_path, 3, method="column", column="hospital_ward")
    manifest = json.loads((tmp_path / "partition.json").read_text())
    assert manifest["column"] == "hospital_ward" and manifest["alpha"] is None
    values = [entry["values"] for entry in manifest["hospitals"]]
    assert sorted(v for group in values for v in group) == [
        "ER",
        "ICU",
        "Maternity",
        "Pediatrics",
        "Surgery",
    ]
    frames = [read_csv(path, schema) for path in paths]
    assert sum(len(frame) for frame in frames) == 10_000
    raw = read_raw(paths[0])
    assert parse_frame(raw, schema).shape == frames[0].shape


def test_rewriting_with_fewer_hospitals_warns_about_stale_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    schema = load_schema("johns_hospital")
    write_partitions(JOHNS, schema, tmp_path, 3, method="iid")
    with caplog.at_level("WARNING", logger="common.data.partition"):
        paths = write_partitions(JOHNS, schema, tmp_path, 2, method="iid")
    assert len(paths) == 2
    assert "partition_stale_files files=hospital-3.csv" in caplog.text

"""Feature encoding: the layout comes from the schema alone, scaling from the schema's ranges."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.data import (
    FeatureEncoder,
    column_feature_names,
    icd9_group,
    load_schema,
    parse_frame,
    parse_schema,
    partition,
    patient_ids,
    read_csv,
    read_raw,
)
from common.data.schema import Schema
from common.data.sources import shared_data_dir
from common.errors import DataError

DATA = shared_data_dir()
DIABETES = DATA / "diabetes130" / "diabetic_data.csv.gz"
JOHNS = DATA / "seed" / "johns_hospital_data.csv"

TINY_YAML = """\
name: tiny
patient_id: pid
target: {column: y, positive: ["1"], negative: ["0"]}
columns:
  count:
    kind: number
    range: [0, 10]
  visits:
    kind: number
    range: [0, 100]
    log1p: true
  age:
    kind: number
    range: [20, 80]
    missing: impute
    impute: 50
  colour:
    kind: category
    values: [red, green]
    unseen: other
    missing: category
  size:
    kind: category
    values: [S, M, L]
    missing: impute
    impute: M
  flag:
    kind: boolean
  when:
    kind: date
    formats: ["%Y-%m-%d"]
    range: [2020-01-01, 2020-01-11]
  diag:
    kind: icd9
    missing: category
"""
TINY_NAMES = [
    "count",
    "visits",
    "age",
    "age__missing",
    "colour=red",
    "colour=green",
    "colour=<other>",
    "colour=<missing>",
    "size=S",
    "size=M",
    "size=L",
    "size__missing",
    "flag",
    "when",
    *[
        f"diag={group}"
        for group in (
            "circulatory",
            "respiratory",
            "digestive",
            "diabetes",
            "injury",
            "musculoskeletal",
            "genitourinary",
            "neoplasms",
            "other",
            "v_e_code",
        )
    ],
    "diag=<missing>",
]


@pytest.fixture(scope="module")
def tiny() -> Schema:
    return parse_schema(TINY_YAML)


def tiny_frame(schema: Schema, rows: list[dict[str, str]]) -> pd.DataFrame:
    """A validated frame from raw text rows, as read_csv would return it."""
    defaults = {
        "pid": "p1",
        "y": "0",
        "count": "5",
        "visits": "0",
        "age": "50",
        "colour": "red",
        "size": "S",
        "flag": "yes",
        "when": "2020-01-01",
        "diag": "250.01",
    }
    raw = pd.DataFrame([{**defaults, **row} for row in rows], dtype=str)
    raw.index = pd.RangeIndex(2, 2 + len(raw), name="line")
    return parse_frame(raw, schema)


def column(encoder: FeatureEncoder, features: np.ndarray, name: str) -> np.ndarray:
    return features[:, encoder.feature_names.index(name)]


@pytest.fixture(scope="module")
def diabetes() -> tuple[Schema, pd.DataFrame]:
    """A seeded sample of 8,000 encounters (with their raw line numbers) from the real file."""
    schema = load_schema("diabetes130")
    raw = read_raw(DIABETES).sample(n=8_000, random_state=7).sort_index()
    return schema, parse_frame(raw, schema)


def test_feature_names_follow_the_schema(tiny: Schema) -> None:
    encoder = FeatureEncoder(tiny)
    assert encoder.feature_names == TINY_NAMES
    assert encoder.n_features == len(TINY_NAMES)


def test_bundled_schemas_have_fixed_feature_counts() -> None:
    diabetes = FeatureEncoder(load_schema("diabetes130"))
    johns = FeatureEncoder(load_schema("johns_hospital"))
    assert diabetes.n_features == 322
    assert johns.n_features == 95
    assert len(set(diabetes.feature_names)) == diabetes.n_features
    assert "diag_1=diabetes" in diabetes.feature_names
    assert "patient_nbr" not in " ".join(diabetes.feature_names)
    assert not any(name.startswith("weight") for name in diabetes.feature_names)
    assert "patient_checkout_date" not in johns.feature_names


def test_two_partitions_share_one_layout(diabetes: tuple[Schema, pd.DataFrame]) -> None:
    schema, frame = diabetes
    first, second = partition(frame, schema, 2, method="column", column="admission_source_id")
    assert set(first["admission_source_id"]) != set(second["admission_source_id"])
    assert len(first) != len(second)
    enc_a, enc_b = FeatureEncoder(schema), FeatureEncoder(schema)
    x_a, y_a = enc_a.transform(first)
    x_b, y_b = enc_b.transform(second)
    assert enc_a.feature_names == enc_b.feature_names
    assert enc_a.layout_digest == enc_b.layout_digest
    assert x_a.shape[1] == x_b.shape[1] == 322
    assert x_a.dtype == x_b.dtype == y_a.dtype == y_b.dtype == np.float32
    source = [name for name in enc_a.feature_names if name.startswith("admission_source_id=")]
    used_a = {name for name in source if column(enc_a, x_a, name).any()}
    used_b = {name for name in source if column(enc_b, x_b, name).any()}
    assert used_a and used_b and used_a != used_b  # different data, same columns


def test_range_max_maps_to_one_wherever_it_comes_from(tiny: Schema) -> None:
    encoder = FeatureEncoder(tiny)
    small = tiny_frame(tiny, [{"count": "10", "visits": "100"}, {"count": "1"}])
    large = tiny_frame(tiny, [{"count": "10", "visits": "100"}, {"count": "9", "visits": "3"}])
    x_small, _ = encoder.transform(small)
    x_large, _ = encoder.transform(large)
    assert column(encoder, x_small, "count")[0] == column(encoder, x_large, "count")[0] == 1.0
    assert column(encoder, x_small, "visits")[0] == column(encoder, x_large, "visits")[0] == 1.0
    assert column(encoder, x_small, "count")[1] == pytest.approx(0.1)
    assert column(encoder, x_large, "visits")[1] == pytest.approx(np.log(4) / np.log(101))


def test_values_outside_the_range_are_clipped(tiny: Schema) -> None:
    encoder = FeatureEncoder(tiny)
    frame = tiny_frame(tiny, [{"count": "25", "age": "5", "when": "2021-06-01"}])
    features, _ = encoder.transform(frame)
    assert column(encoder, features, "count")[0] == 1.0
    assert column(encoder, features, "age")[0] == 0.0
    assert column(encoder, features, "when")[0] == 1.0


def test_date_is_scaled_over_the_schema_range(tiny: Schema) -> None:
    encoder = FeatureEncoder(tiny)
    frame = tiny_frame(tiny, [{"when": "2020-01-01"}, {"when": "2020-01-06"}])
    features, _ = encoder.transform(frame)
    assert list(column(encoder, features, "when")) == [0.0, 0.5]


def test_missing_and_unseen_values_use_their_slots(tiny: Schema) -> None:
    encoder = FeatureEncoder(tiny)
    frame = tiny_frame(
        tiny,
        [{"age": "", "colour": "", "size": "", "diag": ""}, {"colour": "blue", "flag": "no"}],
    )
    features, _ = encoder.transform(frame)
    row = dict(zip(encoder.feature_names, features[0], strict=True))
    assert row["age"] == pytest.approx(0.5) and row["age__missing"] == 1.0
    assert row["colour=<missing>"] == 1.0 and row["colour=red"] == 0.0
    assert row["size=M"] == 1.0 and row["size__missing"] == 1.0
    assert row["diag=<missing>"] == 1.0 and row["diag=diabetes"] == 0.0
    other = dict(zip(encoder.feature_names, features[1], strict=True))
    assert other["colour=<other>"] == 1.0 and other["age__missing"] == 0.0
    assert other["flag"] == 0.0 and row["flag"] == 1.0


def test_each_one_hot_block_sums_to_one(diabetes: tuple[Schema, pd.DataFrame]) -> None:
    schema, frame = diabetes
    encoder = FeatureEncoder(schema)
    features, labels = encoder.transform(frame)
    for spec in schema.feature_columns:
        if spec.kind in ("category", "icd9"):
            names = column_feature_names(spec)
            block = features[:, [encoder.feature_names.index(name) for name in names]]
            assert np.all(block.sum(axis=1) == 1.0), spec.name
    assert features.min() >= 0.0 and features.max() <= 1.0
    assert np.array_equal(labels, frame["readmitted"].to_numpy(dtype=np.float32))


def test_transform_is_deterministic_and_row_wise(diabetes: tuple[Schema, pd.DataFrame]) -> None:
    schema, frame = diabetes
    encoder = FeatureEncoder(schema)
    features, labels = encoder.transform(frame)
    shuffled = frame.sample(frac=1.0, random_state=3)
    x_shuffled, y_shuffled = encoder.transform(shuffled)
    order = frame.index.get_indexer(shuffled.index)
    assert np.array_equal(x_shuffled, features[order])
    assert np.array_equal(y_shuffled, labels[order])
    assert np.array_equal(encoder.transform(frame)[0], features)


def test_johns_hospital_file_encodes(tmp_path: Path) -> None:
    schema = load_schema("johns_hospital")
    features, labels = FeatureEncoder(schema).transform(read_csv(JOHNS, schema))
    assert features.shape == (10_000, 95)
    assert labels.mean() == pytest.approx(0.4142)
    assert np.isfinite(features).all()


@pytest.mark.parametrize(
    ("code", "group"),
    [
        ("250.83", "diabetes"),
        ("250", "diabetes"),
        ("428", "circulatory"),
        ("785", "circulatory"),
        ("486", "respiratory"),
        ("786", "respiratory"),
        ("530", "digestive"),
        ("787", "digestive"),
        ("820", "injury"),
        ("715", "musculoskeletal"),
        ("599", "genitourinary"),
        ("788", "genitourinary"),
        ("162", "neoplasms"),
        ("276", "other"),
        ("8", "other"),
        ("V27", "v_e_code"),
        ("E909", "v_e_code"),
        ("abc", None),
        ("12345", None),
    ],
)
def test_icd9_codes_fall_into_strack_groups(code: str, group: str | None) -> None:
    assert icd9_group(code) == group


def test_missing_value_in_strict_column_is_a_data_error(tiny: Schema) -> None:
    frame = tiny_frame(tiny, [{"count": "3"}, {"count": "4"}])
    broken = frame.assign(count=[3.0, np.nan])
    with pytest.raises(DataError) as caught:
        FeatureEncoder(tiny).transform(broken)
    assert (caught.value.row, caught.value.column) == (3, "count")


def test_frame_without_a_feature_column_is_a_data_error(tiny: Schema) -> None:
    frame = tiny_frame(tiny, [{}]).drop(columns=["flag"])
    with pytest.raises(DataError, match="lacks") as caught:
        FeatureEncoder(tiny).transform(frame)
    assert caught.value.column == "flag"


def test_patient_ids_are_text_in_row_order(tiny: Schema) -> None:
    frame = tiny_frame(tiny, [{"pid": "007"}, {"pid": "42"}])
    assert list(patient_ids(frame, tiny)) == ["007", "42"]

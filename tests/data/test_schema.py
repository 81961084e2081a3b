"""Schema loading: bundled schemas, the YAML format, and errors that name file and field."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

import common.data
from common.data import (
    ColumnSpec,
    Schema,
    TargetRule,
    bundled_schema_names,
    load_schema,
    parse_schema,
)
from common.errors import SchemaError

VALID_YAML = """\
format_version: 1
name: tiny
missing_markers: ["?"]
patient_id: pid
target:
  column: outcome
  positive: ["yes"]
  negative: ["no"]
columns:
  visit_id:
    kind: ignore
  age:
    kind: number
    range: [0, 100]
    missing: impute
    impute: 50
  stays:
    kind: number
    range: [0, 20]
    log1p: true
  colour: &colour
    kind: category
    values: [red, "No", 3]
    unseen: other
    missing: category
  shade: *colour
  smoker:
    kind: boolean
    true_values: [Y]
    false_values: [N]
  admitted:
    kind: date
    formats: ["%d-%m-%Y", "%d/%m/%Y"]
    range: [2020-01-01, 2020-12-31]
  discharged:
    kind: date
    formats: ["%Y-%m-%d"]
    encode: drop
  diag:
    kind: icd9
    missing: category
"""


def write(tmp_path: Path, text: str, name: str = "schema.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_bundled_schema_names_lists_both_datasets() -> None:
    assert {"diabetes130", "johns_hospital"} <= set(bundled_schema_names())


def test_diabetes130_schema_follows_the_dataset_description() -> None:
    schema = load_schema("diabetes130")
    assert schema.name == "diabetes130"
    assert schema.patient_id == "patient_nbr"
    assert schema.target == TargetRule("readmitted", ("<30",), ("NO", ">30"))
    assert schema.missing_markers == ("?",)
    assert schema.column("encounter_id").kind == "ignore"
    assert schema.column("weight").kind == "ignore"
    assert "patient_nbr" not in [spec.name for spec in schema.columns]
    assert [schema.column(f"diag_{i}").kind for i in (1, 2, 3)] == ["icd9"] * 3
    # 50 file columns = 48 listed + patient id + target
    assert len(schema.columns) == 48
    assert schema.column("max_glu_serum").values[0] == "None"


def test_yaml_no_and_yes_stay_text_in_vocabularies() -> None:
    schema = load_schema("diabetes130")
    assert schema.column("insulin").values == ("No", "Down", "Steady", "Up")
    assert schema.column("diabetesMed").true_values == ("Yes",)


def test_johns_hospital_schema_has_day_first_date_formats() -> None:
    schema = load_schema("johns_hospital")
    spec = schema.column("Admission_date")
    assert spec.kind == "date"
    assert spec.formats == ("%d-%m-%Y", "%d/%m/%Y")
    assert spec.date_range == (dt.date(2020, 7, 24), dt.date(2024, 7, 22))
    assert schema.target.positive == ("1",)
    assert schema.column("patient_checkout_date").is_feature is False


def test_load_schema_from_path_reads_every_kind(tmp_path: Path) -> None:
    schema = load_schema(write(tmp_path, VALID_YAML))
    assert schema.source == str(tmp_path / "schema.yaml")
    assert [spec.kind for spec in schema.columns] == [
        "ignore",
        "number",
        "number",
        "category",
        "category",
        "boolean",
        "date",
        "date",
        "icd9",
    ]
    assert schema.column("age").impute == 50.0
    assert schema.column("stays").log1p is True
    assert schema.column("colour").values == ("red", "No", "3")
    assert schema.column("shade").values == schema.column("colour").values
    assert schema.column("admitted").date_range == (dt.date(2020, 1, 1), dt.date(2020, 12, 31))
    assert schema.required_columns[:2] == ("pid", "outcome")
    assert "visit_id" not in schema.required_columns
    assert schema.markers_for(schema.column("age")) == frozenset({"", "?"})


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("    range: [0, 100]\n", "", "range"),
        ("    range: [0, 100]\n", "    range: [100, 0]\n", "range"),
        ("    range: [0, 20]\n", "    rnage: [0, 20]\n", "rnage"),
        ("    kind: icd9\n", "    kind: icd10\n", "columns.diag.kind"),
        ('values: [red, "No", 3]', "values: [red, true]", "values[1]"),
        ("    impute: 50\n", "", "impute"),
        ('  negative: ["no"]\n', '  negative: ["yes"]\n', "target"),
        ("patient_id: pid\n", "", "patient_id"),
        ("    missing: category\n", "    missing: impute\n", "impute"),
        ("format_version: 1\n", "format_version: 2\n", "format_version"),
        ('    formats: ["%Y-%m-%d"]\n', "", "formats"),
        ("  visit_id:\n", "  pid:\n", "pid"),
    ],
)
def test_bad_field_raises_schema_error_naming_file_and_field(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    assert old in VALID_YAML
    path = write(tmp_path, VALID_YAML.replace(old, new, 1))
    with pytest.raises(SchemaError) as caught:
        load_schema(path)
    assert caught.value.file == str(path)
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("    range: [0, 100]\n", "    range: ['0', 100]\n", "field columns.age.range[0]: "),
        ("    range: [0, 100]\n", "    range: [0, .inf]\n", "field columns.age.range[1]: "),
        ("    range: [0, 100]\n", "    range: 100\n", "field columns.age.range: expected [lo, hi]"),
        ("    range: [0, 100]\n", "    range: [0]\n", "field columns.age.range: expected [lo, hi]"),
        ('values: [red, "No", 3]', "values: red", "field columns.colour.values: expected a list"),
        ("    impute: 50\n", "    impute: true\n", "field columns.age.impute: "),
        ("    impute: 50\n", "    impute: '50'\n", "field columns.age.impute: "),
        ("    log1p: true\n", "    log1p: yes\n", "field columns.stays.log1p: "),
        ("    log1p: true\n", "    log1p: 1\n", "field columns.stays.log1p: "),
        ("    missing: category\n", "    missing: sometimes\n", "field columns.colour.missing: "),
        ("format_version: 1\n", "format_version: true\n", "field format_version: "),
        ("format_version: 1\n", "format_version: '1'\n", "field format_version: "),
        ("patient_id: pid\n", "patient_id: ' '\n", "field patient_id: expected a non-empty"),
        ("name: tiny\n", "name: [tiny]\n", "field name: "),
        ("  column: outcome\n", "  column: outcome\n  kind: x\n", "unexpected field target.kind"),
        (
            "    kind: icd9\n",
            "    kind: icd9\n    impute: '250'\n",
            "unexpected field columns.diag.",
        ),
        ("  diag:\n    kind: icd9\n    missing: category\n", "  diag: icd9\n", "columns.diag: "),
        (
            "    range: [2020-01-01, 2020-12-31]\n",
            "    range: [2020-01-01, '2020-13-01']\n",
            "field columns.admitted.range[1]: ",
        ),
    ],
)
def test_wrong_type_is_refused_without_coercion_naming_the_yaml_path(
    old: str, new: str, expected: str
) -> None:
    assert old in VALID_YAML
    with pytest.raises(SchemaError) as caught:
        parse_schema(VALID_YAML.replace(old, new, 1), file="s.yaml")
    assert caught.value.file == "s.yaml"
    assert expected in str(caught.value) and "\n" not in str(caught.value), str(caught.value)


def test_a_key_of_another_kind_is_refused_with_the_keys_allowed_there() -> None:
    text = VALID_YAML.replace("    log1p: true\n", "    log1p: true\n    values: [a]\n", 1)
    with pytest.raises(SchemaError) as caught:
        parse_schema(text)
    assert "unexpected field columns.stays.values; allowed here: [" in str(caught.value)
    assert "'log1p'" in str(caught.value) and "'range'" in str(caught.value)


def test_quoted_iso_dates_are_read_as_dates() -> None:
    text = VALID_YAML.replace(
        "range: [2020-01-01, 2020-12-31]", "range: ['2020-01-01', '2020-12-31']", 1
    )
    assert parse_schema(text).column("admitted").date_range == (
        dt.date(2020, 1, 1),
        dt.date(2020, 12, 31),
    )


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just text\n"])
def test_a_document_that_is_not_a_mapping_is_refused(text: str) -> None:
    with pytest.raises(SchemaError, match="the document: expected a mapping"):
        parse_schema(text)


@pytest.mark.parametrize(
    ("old", "new"),
    [("impute: 50", "impute: " + "9" * 5000), ("2020-12-31]", "2020-13-01]")],
    ids=["integer-beyond-digit-limit", "impossible-date"],
)
def test_a_scalar_yaml_cannot_construct_is_a_schema_error(old: str, new: str) -> None:
    with pytest.raises(SchemaError, match="not valid YAML"):
        parse_schema(VALID_YAML.replace(old, new, 1))


def test_malformed_yaml_raises_schema_error_naming_file(tmp_path: Path) -> None:
    path = write(tmp_path, "name: [unclosed\ncolumns: {")
    with pytest.raises(SchemaError, match="not valid YAML") as caught:
        load_schema(path)
    assert caught.value.file == str(path)


def test_duplicate_column_key_is_rejected_with_its_line(tmp_path: Path) -> None:
    text = VALID_YAML + "  age:\n    kind: ignore\n"
    path = write(tmp_path, text)
    line = text.splitlines().index("  age:", 20) + 1
    with pytest.raises(SchemaError, match=f"duplicate key 'age' at line {line}"):
        load_schema(path)


def test_unknown_schema_name_raises_schema_error() -> None:
    with pytest.raises(SchemaError, match="bundled"):
        load_schema("no_such_dataset")


def test_marker_that_hides_a_category_value_is_rejected() -> None:
    text = VALID_YAML.replace('missing_markers: ["?"]', 'missing_markers: ["?", red]')
    with pytest.raises(SchemaError, match="also mark missing"):
        parse_schema(text)


def test_column_spec_validates_when_built_in_code() -> None:
    with pytest.raises(SchemaError, match="impute"):
        ColumnSpec(name="x", kind="number", range=(0.0, 1.0), impute=0.5)
    with pytest.raises(SchemaError, match="not allowed"):
        ColumnSpec(name="x", kind="icd9", missing="impute", impute="250")
    spec = ColumnSpec(name="x", kind="category", values=("a", "b"), missing="impute", impute="a")
    assert spec.is_feature


def test_schema_rejects_duplicate_columns_in_code() -> None:
    spec = ColumnSpec(name="x", kind="number", range=(0.0, 1.0))
    with pytest.raises(SchemaError, match="more than once"):
        Schema("s", (spec, spec), TargetRule("y", ("1",), ("0",)), "pid")


def test_public_api_is_exported() -> None:
    for name in common.data.__all__:
        assert hasattr(common.data, name), name
    assert {
        "load_schema",
        "read_csv",
        "FeatureEncoder",
        "patient_ids",
        "partition",
        "split_by_patient",
        "write_partitions",
        "Schema",
        "ColumnSpec",
        "TargetRule",
    } <= set(common.data.__all__)

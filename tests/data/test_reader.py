"""Reading hospital CSVs: the real files load, and every bad file names file, row and column."""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import pandas as pd
import pytest

from common.data import load_schema, read_csv, read_raw
from common.data.schema import Schema
from common.data.sources import shared_data_dir
from common.errors import DataError

DATA = shared_data_dir()
DIABETES = DATA / "diabetes130" / "diabetic_data.csv.gz"
JOHNS = DATA / "seed" / "johns_hospital_data.csv"


@pytest.fixture(scope="module")
def johns_schema() -> Schema:
    return load_schema("johns_hospital")


@pytest.fixture(scope="module")
def johns_rows() -> list[list[str]]:
    """Header and the first 5 data rows of the real seed file, as lists of cells."""
    with JOHNS.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        return [next(reader) for _ in range(6)]


def write_rows(path: Path, rows: list[list[str]]) -> Path:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8")
    return path


def with_cell(rows: list[list[str]], line: int, column: str, value: str) -> list[list[str]]:
    """Copy of ``rows`` with the cell at CSV ``line`` (header = 1) and ``column`` replaced."""
    copy = [list(row) for row in rows]
    copy[line - 1][rows[0].index(column)] = value
    return copy


def test_diabetes130_reads_whole_file_with_standard_label() -> None:
    schema = load_schema("diabetes130")
    frame = read_csv(DIABETES, schema)
    assert frame.shape == (101_766, 50)
    assert frame.index[0] == 2 and frame.index[-1] == 101_767
    assert frame["readmitted"].mean() == pytest.approx(0.112, abs=0.001)
    assert int(frame["readmitted"].sum()) == 11_357
    assert frame["patient_nbr"].nunique() == 71_518
    # "None" is a category of max_glu_serum, "?" is missing
    assert (frame["max_glu_serum"] == "None").sum() == 96_420
    assert frame["race"].isna().sum() == 2_273
    assert frame["gender"].isna().sum() == 3  # Unknown/Invalid is a column missing marker
    assert frame["time_in_hospital"].dtype == "float64"
    assert frame["weight"].iloc[0] == "?"  # ignored columns stay untouched


def test_johns_hospital_reads_mixed_date_formats(johns_schema: Schema) -> None:
    frame = read_csv(JOHNS, johns_schema)
    assert frame.shape == (10_000, 26)
    assert frame["readmission"].mean() == pytest.approx(0.4142)
    assert frame.loc[2, "Admission_date"] == pd.Timestamp(2024, 1, 30)  # 30-01-2024
    assert frame.loc[3, "patient_checkout_date"] == pd.Timestamp(2024, 7, 7)  # 07/07/2024
    assert frame["Admission_date"].notna().all()
    assert frame["patient_assigned_doctor"].dtype == "boolean"


def test_gzip_file_reads_like_plain_csv(
    tmp_path: Path, johns_schema: Schema, johns_rows: list[list[str]]
) -> None:
    plain = write_rows(tmp_path / "h.csv", johns_rows)
    packed = tmp_path / "h.csv.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    pd.testing.assert_frame_equal(read_csv(packed, johns_schema), read_csv(plain, johns_schema))


def test_missing_file_names_the_file(tmp_path: Path, johns_schema: Schema) -> None:
    with pytest.raises(DataError, match="not found") as caught:
        read_csv(tmp_path / "absent.csv", johns_schema)
    assert caught.value.file == str(tmp_path / "absent.csv")


def test_empty_file_names_file_and_header_row(tmp_path: Path, johns_schema: Schema) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(DataError, match="empty") as caught:
        read_csv(path, johns_schema)
    assert (caught.value.file, caught.value.row, caught.value.column) == (str(path), 1, None)


def test_header_only_file_has_no_data_rows(
    tmp_path: Path, johns_schema: Schema, johns_rows: list[list[str]]
) -> None:
    path = write_rows(tmp_path / "header.csv", johns_rows[:1])
    with pytest.raises(DataError, match="no data rows") as caught:
        read_csv(path, johns_schema)
    assert (caught.value.file, caught.value.row) == (str(path), 2)


def test_missing_required_column_names_file_row_and_column(
    tmp_path: Path, johns_schema: Schema, johns_rows: list[list[str]]
) -> None:
    drop = johns_rows[0].index("patient_age")
    rows = [row[:drop] + row[drop + 1 :] for row in johns_rows]
    path = write_rows(tmp_path / "no_age.csv", rows)
    with pytest.raises(DataError, match="lacks required column") as caught:
        read_csv(path, johns_schema)
    assert (caught.value.file, caught.value.row, caught.value.column) == (
        str(path),
        1,
        "patient_age",
    )


def test_missing_ignored_column_is_allowed(
    tmp_path: Path, johns_schema: Schema, johns_rows: list[list[str]]
) -> None:
    drop = johns_rows[0].index("doctor_name")
    rows = [row[:drop] + row[drop + 1 :] for row in johns_rows]
    frame = read_csv(write_rows(tmp_path / "no_name.csv", rows), johns_schema)
    assert len(frame) == 5 and "doctor_name" not in frame.columns


@pytest.mark.parametrize(
    ("line", "column", "value", "message"),
    [
        (4, "patient_age", "forty", "cannot read 'forty' as a number"),
        (5, "readmission", "maybe", "unknown target value 'maybe'"),
        (6, "patient_gender", "X", "unknown category 'X'"),
        (3, "Admission_date", "2024-13-45", "as a date"),
        (2, "patient_assigned_doctor", "perhaps", "as a boolean"),
        (4, "occupied_beds", "", "missing value"),
        (5, "patient_id", " ", "missing patient id"),
        (3, "patient_age", "inf", "as a number"),
    ],
)
def test_bad_value_names_file_row_and_column(
    tmp_path: Path,
    johns_schema: Schema,
    johns_rows: list[list[str]],
    line: int,
    column: str,
    value: str,
    message: str,
) -> None:
    path = write_rows(tmp_path / "bad.csv", with_cell(johns_rows, line, column, value))
    with pytest.raises(DataError, match=message) as caught:
        read_csv(path, johns_schema)
    assert (caught.value.file, caught.value.row, caught.value.column) == (str(path), line, column)
    assert f"row {line}" in str(caught.value) and str(path) in str(caught.value)


def test_first_bad_row_is_named_and_others_counted(
    tmp_path: Path, johns_schema: Schema, johns_rows: list[list[str]]
) -> None:
    rows = with_cell(johns_rows, 3, "patient_age", "old")
    rows = with_cell(rows, 6, "patient_age", "older")
    with pytest.raises(DataError, match=r"'old'.*1 more row") as caught:
        read_csv(write_rows(tmp_path / "bad.csv", rows), johns_schema)
    assert caught.value.row == 3


def test_blank_lines_do_not_shift_row_numbers(
    tmp_path: Path, johns_schema: Schema, johns_rows: list[list[str]]
) -> None:
    rows = with_cell(johns_rows, 6, "patient_age", "forty")
    path = write_rows(tmp_path / "blank.csv", rows)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines[:3], "", *lines[3:]]) + "\n")  # blank line 4
    with pytest.raises(DataError) as caught:
        read_csv(path, johns_schema)
    assert caught.value.row == 7


def test_row_with_extra_fields_names_its_line(
    tmp_path: Path, johns_schema: Schema, johns_rows: list[list[str]]
) -> None:
    rows = [list(row) for row in johns_rows]
    rows[3].append("surplus")
    with pytest.raises(DataError, match="malformed") as caught:
        read_csv(write_rows(tmp_path / "wide.csv", rows), johns_schema)
    assert caught.value.row == 4


def test_unseen_category_under_other_policy_is_kept(
    tmp_path: Path, johns_schema: Schema, johns_rows: list[list[str]]
) -> None:
    path = write_rows(tmp_path / "ward.csv", with_cell(johns_rows, 2, "hospital_ward", "Oncology"))
    frame = read_csv(path, johns_schema)
    assert frame.loc[2, "hospital_ward"] == "Oncology"


def test_read_raw_keeps_values_and_line_numbers(
    tmp_path: Path, johns_rows: list[list[str]]
) -> None:
    raw = read_raw(write_rows(tmp_path / "raw.csv", johns_rows))
    assert list(raw.index) == [2, 3, 4, 5, 6]
    assert list(raw.loc[3]) == johns_rows[2]

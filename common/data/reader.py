"""Read a hospital's CSV file and check it against its schema.

This is the one place where pandas meets a file, so every problem a data team can fix (a missing
column, a value that is no number, an unknown category) becomes a DataError naming the file, the
CSV line and the column. The frame that comes back is typed and ready for the feature encoder.
"""

from __future__ import annotations

import logging
import os
import re
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from common.data.features import ICD9_PATTERN
from common.data.schema import ColumnSpec, Schema
from common.errors import DataError
from common.logs import log_event

_LOG = logging.getLogger(__name__)
_FIRST_DATA_LINE = 2  # line 1 is the header
_SHOWN_VALUES = 8


def read_raw(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a CSV (``.csv`` or ``.csv.gz``) as untouched strings.

    The index holds each row's CSV line number (header = line 1), so later checks can name the
    line; it equals the record number + 1, which is the line number unless a quoted field spans
    several lines. Blank lines are dropped. Raises DataError if the file is missing, unreadable,
    empty, or has rows with more fields than the header.
    """
    file = os.fspath(path)
    if not Path(file).is_file():
        raise DataError("file not found", file=file)
    try:
        frame = pd.read_csv(
            file,
            dtype=str,
            na_filter=False,
            keep_default_na=False,
            skip_blank_lines=False,
            encoding="utf-8-sig",
            compression="infer",
        )
    except pd.errors.EmptyDataError as exc:
        raise DataError("file is empty: no header line", file=file, row=1) from exc
    except pd.errors.ParserError as exc:
        match = re.search(r"line (\d+)", str(exc))
        row = int(match.group(1)) if match else None
        raise DataError(f"malformed CSV: {exc}", file=file, row=row) from exc
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as exc:
        raise DataError(f"cannot read file: {exc}", file=file) from exc
    frame.columns = pd.Index([str(name).strip() for name in frame.columns])
    frame.index = pd.RangeIndex(_FIRST_DATA_LINE, _FIRST_DATA_LINE + len(frame), name="line")
    blank = (frame == "").all(axis=1)
    frame = frame.loc[~blank]
    if frame.empty:
        raise DataError("file has a header but no data rows", file=file, row=_FIRST_DATA_LINE)
    return frame


def read_csv(
    path: str | os.PathLike[str], schema: Schema, *, labelled: bool = True
) -> pd.DataFrame:
    """Read and validate a hospital CSV against ``schema``.

    Returns a frame indexed by CSV line number with: the patient id as text, the target as int8
    0/1, numbers as float64, booleans as pandas ``boolean``, dates as datetime64, categories and
    ICD-9 codes as text (missing values as NaN), ignored and unknown columns untouched. Raises
    DataError naming file, row and column for the first problem found in each column.

    ``labelled=False`` reads rows to score, whose outcome is not known yet: the target column
    may be absent, and when present it is left out of the frame unread.
    """
    file = os.fspath(path)
    return parse_frame(read_raw(file), schema, file=file, labelled=labelled)


def parse_frame(
    raw: pd.DataFrame, schema: Schema, *, file: str | None = None, labelled: bool = True
) -> pd.DataFrame:
    """Validate and type a frame from :func:`read_raw` (see :func:`read_csv`); pure, no I/O.

    ``file`` only names the source in errors and logs.
    """
    target = schema.target.column
    required = [name for name in schema.required_columns if labelled or name != target]
    missing = [name for name in required if name not in raw.columns]
    if missing:
        raise DataError(
            f"header lacks required column(s) {missing}", file=file, row=1, column=missing[0]
        )
    listed = {spec.name for spec in schema.columns}
    out: dict[str, pd.Series] = {}
    for name in raw.columns:
        column = raw[name]
        if name == schema.patient_id:
            out[name] = _patient_ids(column, schema, file)
        elif name == target:
            if labelled:
                out[name] = _labels(column, schema, file)
        elif name in listed:
            spec = schema.column(name)
            out[name] = _parse(column, spec, schema.markers_for(spec), file)
        else:
            out[name] = column
    known = listed | {schema.patient_id, schema.target.column}
    unknown = [name for name in raw.columns if name not in known]
    if unknown:
        log_event(_LOG, "data_unknown_columns", file=file, columns=",".join(unknown))
    frame = pd.DataFrame(out, index=raw.index)
    counts = {"positives": int(frame[target].sum())} if labelled else {}
    log_event(_LOG, "data_read", file=file, schema=schema.name, rows=len(frame), **counts)
    return frame


def _fail(message: str, column: pd.Series, bad: pd.Series, file: str | None) -> DataError:
    """Build the error for the first flagged row of ``column``."""
    line = int(column.index[int(np.argmax(bad.to_numpy()))])
    count = int(bad.sum())
    more = f" ({count - 1} more row(s) in this column)" if count > 1 else ""
    text = message.replace("{value!r}", repr(column.loc[line]))
    return DataError(f"{text}{more}", file=file, row=line, column=str(column.name))


def _patient_ids(column: pd.Series, schema: Schema, file: str | None) -> pd.Series:
    text = column.str.strip()
    empty = text.isin(["", *schema.missing_markers])
    if empty.any():
        raise _fail("missing patient id {value!r}", column, empty, file)
    return text


def _labels(column: pd.Series, schema: Schema, file: str | None) -> pd.Series:
    rule = schema.target
    text = column.str.strip()
    positive = text.isin(list(rule.positive))
    unknown = ~positive & ~text.isin(list(rule.negative))
    if unknown.any():
        raise _fail(
            f"unknown target value {{value!r}}; positive {list(rule.positive)}, "
            f"negative {list(rule.negative)}",
            column,
            unknown,
            file,
        )
    return positive.astype("int8")


def _parse(
    column: pd.Series, spec: ColumnSpec, markers: frozenset[str], file: str | None
) -> pd.Series:
    """Check one column and convert it to the type the encoder expects."""
    if spec.kind == "ignore":
        return column
    text = column.str.strip()
    missing = text.isin(list(markers))
    if spec.missing == "error" and missing.any():
        raise _fail(
            "missing value {value!r}, and the schema allows none in this column",
            column,
            missing,
            file,
        )
    present = text.where(~missing)
    if spec.kind == "number":
        numbers = pd.to_numeric(present, errors="coerce").astype("float64")
        bad = ~missing & ~np.isfinite(numbers)
        if bad.any():
            raise _fail("cannot read {value!r} as a number", column, bad, file)
        return numbers
    if spec.kind == "category":
        unseen = ~missing & ~text.isin(list(spec.values))
        if spec.unseen == "error" and unseen.any():
            shown = list(spec.values[:_SHOWN_VALUES]) + (["..."] if len(spec.values) > 8 else [])
            raise _fail(
                f"unknown category {{value!r}}; expected one of {shown}", column, unseen, file
            )
        return present
    if spec.kind == "boolean":
        lower = text.str.lower()
        true = lower.isin([v.lower() for v in spec.true_values])
        false = lower.isin([v.lower() for v in spec.false_values])
        bad = ~missing & ~true & ~false
        if bad.any():
            raise _fail(
                f"cannot read {{value!r}} as a boolean; true is one of {list(spec.true_values)}, "
                f"false one of {list(spec.false_values)}",
                column,
                bad,
                file,
            )
        return pd.Series(pd.array(true.to_numpy(), dtype="boolean"), index=column.index).mask(
            missing
        )
    if spec.kind == "date":
        dates = parse_dates(present, spec.formats)
        bad = ~missing & dates.isna()
        if bad.any():
            raise _fail(
                f"cannot read {{value!r}} as a date in formats {list(spec.formats)}",
                column,
                bad,
                file,
            )
        return dates
    bad = ~missing & ~text.str.fullmatch(ICD9_PATTERN)
    if bad.any():
        raise _fail("{value!r} is not an ICD-9 code (e.g. 250.83, V27, E909)", column, bad, file)
    return present


def parse_dates(values: pd.Series, formats: tuple[str, ...]) -> pd.Series:
    """Parse text with the first of ``formats`` that fits each value; NaT where none does."""
    result = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns]")
    for fmt in formats:
        todo = result.isna() & values.notna()
        if not todo.any():
            break
        parsed = pd.to_datetime(values[todo], format=fmt, errors="coerce")
        result = result.where(~todo, parsed.reindex(values.index))
    return result

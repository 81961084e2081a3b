"""Turn a validated frame into a float32 feature matrix whose layout depends on the schema only.

Ranges, vocabularies and missing-value policies all come from the schema, never from the rows at
hand: two hospitals with different local data get the same features in the same order, which is
what lets their encrypted model updates be added together.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re

import numpy as np
import pandas as pd

from common.data.schema import ColumnSpec, Schema
from common.errors import DataError

OTHER = "<other>"
MISSING = "<missing>"
INDICATOR_SUFFIX = "__missing"
_SECONDS_PER_DAY = 86_400.0

# Diagnosis groups of Strack et al. 2014 (Table 2), in feature order. ``v_e_code`` holds the
# supplementary V codes and external-cause E codes, which the paper folds into "other".
ICD9_GROUPS = (
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
ICD9_PATTERN = r"(?:\d{1,3}(?:\.\d{1,2})?|[Vv]\d{2}(?:\.\d{1,2})?|[Ee]\d{3}(?:\.\d)?)"
_ICD9_RE = re.compile(ICD9_PATTERN)
_ICD9_RANGES = (
    ("circulatory", 390, 459),
    ("circulatory", 785, 785),
    ("respiratory", 460, 519),
    ("respiratory", 786, 786),
    ("digestive", 520, 579),
    ("digestive", 787, 787),
    ("injury", 800, 999),
    ("musculoskeletal", 710, 739),
    ("genitourinary", 580, 629),
    ("genitourinary", 788, 788),
    ("neoplasms", 140, 239),
)


def icd9_group(code: str) -> str | None:
    """Return the Strack et al. diagnosis group of an ICD-9 code, or None if it is no ICD-9 code."""
    text = code.strip()
    if not _ICD9_RE.fullmatch(text):
        return None
    if text[0] in "VvEe":
        return "v_e_code"
    value = float(text)
    if 250 <= value < 251:
        return "diabetes"
    chapter = int(value)
    for group, lo, hi in _ICD9_RANGES:
        if lo <= chapter <= hi:
            return group
    return "other"


def column_feature_names(spec: ColumnSpec) -> list[str]:
    """Names of the features one column yields, in layout order (empty for non-features)."""
    if not spec.is_feature:
        return []
    if spec.kind in ("category", "icd9"):
        levels = list(spec.values) if spec.kind == "category" else list(ICD9_GROUPS)
        if spec.kind == "category" and spec.unseen == "other":
            levels.append(OTHER)
        if spec.missing == "category":
            levels.append(MISSING)
        names = [f"{spec.name}={level}" for level in levels]
    else:
        names = [spec.name]
    if spec.missing == "impute":
        names.append(f"{spec.name}{INDICATOR_SUFFIX}")
    return names


class FeatureEncoder:
    """Encode frames returned by ``read_csv`` into (features, labels) with a fixed layout.

    Numbers, booleans and dates become one value in [0, 1] (min-max over the schema's range,
    clipped); categories and ICD-9 groups become one-hot blocks; ``missing: impute`` adds a
    0/1 missing-indicator feature after the column's block.
    """

    def __init__(self, schema: Schema) -> None:
        self._schema = schema
        self._blocks = tuple((spec, column_feature_names(spec)) for spec in schema.feature_columns)
        self._names = tuple(name for _, names in self._blocks for name in names)

    @property
    def schema(self) -> Schema:
        """The schema this encoder follows."""
        return self._schema

    @property
    def feature_names(self) -> list[str]:
        """Feature names in column order of the matrix (a fresh list each call)."""
        return list(self._names)

    @property
    def n_features(self) -> int:
        """Number of columns of the feature matrix."""
        return len(self._names)

    @property
    def layout_digest(self) -> str:
        """SHA-256 over feature names and scaling settings: equal digests, compatible models."""
        settings = [
            (spec.name, spec.range, spec.log1p, spec.date_range, spec.impute)
            for spec, _ in self._blocks
        ]
        return hashlib.sha256(repr((self._names, settings)).encode("utf-8")).hexdigest()

    def transform(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Return features ``(n, n_features)`` and labels ``(n,)``, both float32, in row order.

        Raises DataError (naming the row, i.e. the CSV line from ``read_csv``, and the column)
        for a missing column, a missing value the schema forbids, or an unknown category.
        """
        needed = [spec.name for spec, _ in self._blocks] + [self._schema.target.column]
        absent = [name for name in needed if name not in df.columns]
        if absent:
            raise DataError(f"frame lacks column(s) {absent}", column=absent[0])
        return self.features(df), _labels(df[self._schema.target.column])

    def features(self, df: pd.DataFrame) -> np.ndarray:
        """The features ``(n, n_features)`` alone, float32 in row order: rows to score, read
        with ``read_csv(..., labelled=False)``. Raises DataError as :meth:`transform` does."""
        absent = [spec.name for spec, _ in self._blocks if spec.name not in df.columns]
        if absent:
            raise DataError(f"frame lacks column(s) {absent}", column=absent[0])
        features = np.zeros((len(df), self.n_features), dtype=np.float32)
        start = 0
        for spec, names in self._blocks:
            block = _encode_column(df[spec.name], spec, len(names))
            features[:, start : start + len(names)] = block
            start += len(names)
        return features


def patient_ids(df: pd.DataFrame, schema: Schema) -> np.ndarray:
    """Patient id of every row, as text (for grouped splits and cross-validation)."""
    if schema.patient_id not in df.columns:
        raise DataError("frame lacks the patient id column", column=schema.patient_id)
    return df[schema.patient_id].astype(str).to_numpy(dtype=object)


def _labels(target: pd.Series) -> np.ndarray:
    values = pd.to_numeric(target, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isin(values, (0.0, 1.0))
    if bad.any():
        raise _error("target must be 0/1 as returned by read_csv", target, bad)
    return values.astype(np.float32)


def _error(message: str, column: pd.Series, bad: np.ndarray) -> DataError:
    """DataError for the first flagged row; the row is the CSV line when the index holds it."""
    label = column.index[int(np.argmax(bad))]
    row = int(label) if isinstance(label, int | np.integer) else None
    return DataError(message, row=row, column=str(column.name))


def _encode_column(column: pd.Series, spec: ColumnSpec, width: int) -> np.ndarray:
    if spec.kind in ("category", "icd9"):
        return _one_hot(column, spec, width)
    if spec.kind == "number":
        values = pd.to_numeric(column, errors="coerce").to_numpy(np.float64, na_value=np.nan)
    elif spec.kind == "boolean":
        try:
            flags = column.astype("boolean")
        except (TypeError, ValueError) as exc:
            raise DataError("expected booleans as returned by read_csv", column=spec.name) from exc
        values = flags.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        values = _days(column, spec)
    missing = np.isnan(values)
    if missing.any() and spec.impute is None:
        raise _error("missing value, and the schema allows none in this column", column, missing)
    if spec.impute is not None:
        values = np.where(missing, _impute_number(spec), values)
    scaled = _scale(values, spec)
    if spec.missing == "impute":
        return np.column_stack([scaled, missing.astype(np.float64)])
    return scaled.reshape(-1, 1)


def _impute_number(spec: ColumnSpec) -> float:
    if isinstance(spec.impute, dt.date) and spec.date_range is not None:
        return (spec.impute - spec.date_range[0]).days
    if isinstance(spec.impute, bool):
        return 1.0 if spec.impute else 0.0
    if isinstance(spec.impute, float | int):
        return float(spec.impute)
    raise DataError(f"impute value {spec.impute!r} does not fit kind {spec.kind}", column=spec.name)


def _days(column: pd.Series, spec: ColumnSpec) -> np.ndarray:
    """Days since the start of the schema's date range (fractional; NaN where missing)."""
    if spec.date_range is None:
        raise DataError("date column without a range cannot be encoded", column=spec.name)
    try:
        dates = pd.to_datetime(column)
    except (TypeError, ValueError) as exc:
        raise DataError("expected dates as returned by read_csv", column=spec.name) from exc
    delta = (dates - pd.Timestamp(spec.date_range[0])).dt.total_seconds()
    return delta.to_numpy(dtype=np.float64, na_value=np.nan) / _SECONDS_PER_DAY


def _scale(values: np.ndarray, spec: ColumnSpec) -> np.ndarray:
    """Min-max scale into [0, 1] over the schema's range, after clipping (and log1p)."""
    if spec.kind == "boolean":
        return values
    if spec.kind == "date" and spec.date_range is not None:
        lo, hi = 0.0, float((spec.date_range[1] - spec.date_range[0]).days)
    elif spec.range is not None:
        lo, hi = spec.range
    else:
        raise DataError("number column without a range cannot be encoded", column=spec.name)
    clipped = np.clip(values, lo, hi)
    if spec.log1p:
        return (np.log1p(clipped) - np.log1p(lo)) / (np.log1p(hi) - np.log1p(lo))
    return (clipped - lo) / (hi - lo)


def _one_hot(column: pd.Series, spec: ColumnSpec, width: int) -> np.ndarray:
    """One-hot block for a category or ICD-9 column, with other/missing slots per the schema."""
    missing = column.isna().to_numpy()
    text = column.astype(str).where(~missing)
    if spec.kind == "icd9":
        groups = {code: icd9_group(code) for code in pd.unique(text.dropna())}
        mapped = text.map(groups)
        invalid = (mapped.isna().to_numpy()) & ~missing
        if invalid.any():
            raise _error("not an ICD-9 code", column, invalid)
        levels = list(ICD9_GROUPS)
        text = mapped
    else:
        levels = list(spec.values)
    codes = pd.Index(levels).get_indexer(pd.Index(text)).astype(np.int64)
    unseen = (codes < 0) & ~missing
    if unseen.any():
        if spec.unseen != "other":
            raise _error(f"unknown category {text[unseen].iloc[0]!r}", column, unseen)
        codes[unseen] = len(levels)
    if missing.any():
        if spec.missing == "category":
            codes[missing] = width - 1
        elif spec.missing == "impute":
            codes[missing] = levels.index(str(spec.impute))
        else:
            raise _error(
                "missing value, and the schema allows none in this column", column, missing
            )
    block = np.zeros((len(column), width), dtype=np.float64)
    block[np.arange(len(column)), codes] = 1.0
    if spec.missing == "impute":
        block[:, -1] = missing
    return block

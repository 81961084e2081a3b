"""Dataset schemas: what each column of a hospital's CSV means and how it becomes features.

A schema is plain data (frozen dataclasses). Everything that decides the feature layout (ranges,
vocabularies, missing-value policies) lives here and never comes from a hospital's local data, so
every hospital that uses the same schema produces the same feature layout. Schemas are written in
YAML (see ``schemas/*.yaml``) and loaded with :func:`common.data.schema_yaml.load_schema`; the
dataclasses validate themselves, so a schema built in code is checked the same way.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Literal, get_args

from common.errors import SchemaError

ColumnKind = Literal["number", "category", "boolean", "date", "icd9", "ignore"]
MissingPolicy = Literal["error", "category", "impute"]
UnseenPolicy = Literal["other", "error"]
DateEncoding = Literal["days", "drop"]
ImputeValue = float | str | bool | dt.date

DEFAULT_TRUE_VALUES = ("true", "yes", "y", "t", "1")
DEFAULT_FALSE_VALUES = ("false", "no", "n", "f", "0")


@dataclass(frozen=True)
class ColumnSpec:
    """One column of the CSV: its kind, its missing-value policy and its kind-specific settings.

    Only the fields of the column's kind are used: ``range``/``log1p`` (number), ``values``/
    ``unseen`` (category), ``true_values``/``false_values`` (boolean), ``formats``/``encode``/
    ``date_range`` (date). ``missing_markers`` add to the dataset-wide markers.
    """

    name: str
    kind: ColumnKind
    description: str = ""
    missing: MissingPolicy = "error"
    missing_markers: tuple[str, ...] = ()
    impute: ImputeValue | None = None
    range: tuple[float, float] | None = None
    log1p: bool = False
    values: tuple[str, ...] = ()
    unseen: UnseenPolicy = "error"
    true_values: tuple[str, ...] = DEFAULT_TRUE_VALUES
    false_values: tuple[str, ...] = DEFAULT_FALSE_VALUES
    formats: tuple[str, ...] = ()
    encode: DateEncoding = "days"
    date_range: tuple[dt.date, dt.date] | None = None

    def __post_init__(self) -> None:
        problem = _column_problem(self)
        if problem is not None:
            raise SchemaError(problem, column=self.name)

    @property
    def is_feature(self) -> bool:
        """True if the column contributes at least one feature."""
        return self.kind != "ignore" and not (self.kind == "date" and self.encode == "drop")


@dataclass(frozen=True)
class TargetRule:
    """Which raw values of the target column are the positive and the negative class."""

    column: str
    positive: tuple[str, ...]
    negative: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.positive or not self.negative:
            raise SchemaError("field target: positive and negative must both be non-empty")
        overlap = set(self.positive) & set(self.negative)
        if overlap:
            raise SchemaError(f"field target: values {sorted(overlap)} are positive and negative")


@dataclass(frozen=True)
class Schema:
    """A dataset: its columns in feature order, target rule, patient id and missing markers."""

    name: str
    columns: tuple[ColumnSpec, ...]
    target: TargetRule
    patient_id: str
    missing_markers: tuple[str, ...] = ()
    description: str = ""
    source: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        names = [spec.name for spec in self.columns]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise SchemaError(f"field columns: listed more than once: {duplicates}")
        for special in (self.patient_id, self.target.column):
            if special in names:
                raise SchemaError(
                    "field columns: the patient id and target columns are declared at the top "
                    "level and must not be listed under columns",
                    column=special,
                )
        if self.patient_id == self.target.column:
            raise SchemaError("field patient_id: must differ from the target column")
        for spec in self.columns:
            hidden = sorted(set(spec.values) & self.markers_for(spec))
            if hidden:
                raise SchemaError(
                    f"field values: {hidden} also mark missing values", column=spec.name
                )
        if not any(spec.is_feature for spec in self.columns):
            raise SchemaError("field columns: no column yields a feature")

    def column(self, name: str) -> ColumnSpec:
        """Return the spec of column ``name`` (KeyError if the schema does not list it)."""
        for spec in self.columns:
            if spec.name == name:
                return spec
        raise KeyError(name)

    @property
    def feature_columns(self) -> tuple[ColumnSpec, ...]:
        """Columns that yield features, in feature order."""
        return tuple(spec for spec in self.columns if spec.is_feature)

    @property
    def required_columns(self) -> tuple[str, ...]:
        """Columns a CSV must have: patient id, target and every column that is not ``ignore``."""
        listed = tuple(spec.name for spec in self.columns if spec.kind != "ignore")
        return (self.patient_id, self.target.column, *listed)

    def markers_for(self, spec: ColumnSpec) -> frozenset[str]:
        """Raw strings that mean "missing" in this column (the empty string always does)."""
        return frozenset(("", *self.missing_markers, *spec.missing_markers))


def _column_problem(spec: ColumnSpec) -> str | None:
    """Say what is inconsistent in a column spec, or None; kept pure so it reads as a rule list."""
    allowed_missing: dict[str, tuple[str, ...]] = {
        "category": ("error", "category", "impute"),
        "icd9": ("error", "category"),
        "ignore": ("error",),
    }
    if spec.kind not in get_args(ColumnKind):
        return f"field kind: unknown kind {spec.kind!r}; expected one of {get_args(ColumnKind)}"
    if spec.missing not in allowed_missing.get(spec.kind, ("error", "impute")):
        return f"field missing: {spec.missing!r} is not allowed for kind {spec.kind!r}"
    if (spec.missing == "impute") != (spec.impute is not None):
        return "field impute: give an impute value exactly when missing is 'impute'"
    if spec.unseen not in get_args(UnseenPolicy):
        return f"field unseen: expected one of {get_args(UnseenPolicy)}"
    if spec.kind == "number":
        return _number_problem(spec)
    if spec.kind == "category":
        if not spec.values or len(set(spec.values)) != len(spec.values):
            return "field values: give a non-empty list of distinct category values"
        if spec.impute is not None and spec.impute not in spec.values:
            return "field impute: must be one of the listed values"
    if spec.kind == "boolean":
        if not spec.true_values or not spec.false_values:
            return "fields true_values/false_values: must not be empty"
        if {v.lower() for v in spec.true_values} & {v.lower() for v in spec.false_values}:
            return "fields true_values/false_values: must not overlap"
        if spec.impute is not None and not isinstance(spec.impute, bool):
            return "field impute: must be true or false"
    if spec.kind == "date":
        return _date_problem(spec)
    return None


def _number_problem(spec: ColumnSpec) -> str | None:
    if spec.range is None:
        return "field range: a number column needs range: [lo, hi]"
    lo, hi = spec.range
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        return f"field range: need finite lo < hi, got {list(spec.range)}"
    if spec.log1p and lo <= -1:
        return "field range: log1p needs lo > -1"
    if spec.impute is not None and (isinstance(spec.impute, bool | str | dt.date)):
        return "field impute: must be a number"
    return None


def _date_problem(spec: ColumnSpec) -> str | None:
    if not spec.formats:
        return "field formats: list at least one date format, e.g. '%d-%m-%Y'"
    if spec.encode not in get_args(DateEncoding):
        return f"field encode: expected one of {get_args(DateEncoding)}"
    if spec.encode == "days" and (
        spec.date_range is None or spec.date_range[0] >= spec.date_range[1]
    ):
        return "field range: encode 'days' needs range: [first date, last date] with first < last"
    if spec.impute is not None and not isinstance(spec.impute, dt.date):
        return "field impute: must be a date (YYYY-MM-DD)"
    return None

"""Dataset schemas: what each column of a hospital's CSV means and how it becomes features.

A schema is plain data (frozen dataclasses). Everything that decides the feature layout (ranges,
vocabularies, missing-value policies) lives here and never comes from a hospital's local data, so
every hospital that uses the same schema produces the same feature layout. Schemas are written in
YAML (see ``schemas/*.yaml``) and loaded with :func:`load_schema`.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, cast, get_args

import yaml

from common.errors import SchemaError

ColumnKind = Literal["number", "category", "boolean", "date", "icd9", "ignore"]
MissingPolicy = Literal["error", "category", "impute"]
UnseenPolicy = Literal["other", "error"]
DateEncoding = Literal["days", "drop"]
ImputeValue = float | str | bool | dt.date

DEFAULT_TRUE_VALUES = ("true", "yes", "y", "t", "1")
DEFAULT_FALSE_VALUES = ("false", "no", "n", "f", "0")
FORMAT_VERSION = 1


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


# ----------------------------------------------------------------------------- YAML loading


class _Loader(yaml.SafeLoader):
    """Safe YAML loader that keeps ``No``/``Yes``/``On``/``Off`` as strings (YAML 1.2 booleans)
    and rejects duplicate keys, which plain PyYAML silently drops."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise SchemaError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_BOOL_TAG = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)

_COMMON_KEYS = {"kind", "description", "missing", "missing_markers", "impute"}
_KIND_KEYS: dict[str, set[str]] = {
    "number": {"range", "log1p"},
    "category": {"values", "unseen"},
    "boolean": {"true_values", "false_values"},
    "date": {"formats", "encode", "range"},
    "icd9": set(),
    "ignore": set(),
}
_TOP_KEYS = {"format_version", "name", "description", "missing_markers", "patient_id", "target"}


def bundled_schema_names() -> tuple[str, ...]:
    """Names of the schemas shipped with the package (``schemas/<name>.yaml``)."""
    folder = resources.files("common.data") / "schemas"
    return tuple(sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")))


def load_schema(name_or_path: str | os.PathLike[str]) -> Schema:
    """Load a bundled schema by name (``"diabetes130"``) or a schema YAML file by path.

    Raises SchemaError naming the file and the offending field when the file is unreadable,
    is not valid YAML, or describes an inconsistent schema.
    """
    text_name = os.fspath(name_or_path)
    if text_name in bundled_schema_names():
        resource = resources.files("common.data") / "schemas" / f"{text_name}.yaml"
        file, text = str(resource), resource.read_text(encoding="utf-8")
    else:
        path = Path(text_name)
        file = str(path)
        if not path.is_file():
            raise SchemaError(
                f"no such schema file, and not a bundled schema {list(bundled_schema_names())}",
                file=file,
            )
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SchemaError(f"cannot read schema file: {exc}", file=file) from exc
    return parse_schema(text, file=file)


def parse_schema(text: str, *, file: str = "<string>") -> Schema:
    """Build a Schema from YAML text; ``file`` only names the source in errors."""
    try:
        data = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        raise SchemaError(f"not valid YAML: {exc}", file=file) from exc
    except SchemaError as exc:
        raise SchemaError(str(exc), file=file) from None
    top = _mapping(data, "the document", file)
    _check_keys(top, _TOP_KEYS | {"columns"}, "the document", file)
    version = top.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise SchemaError(f"field format_version: unsupported version {version!r}", file=file)
    target = _mapping(top.get("target"), "target", file)
    _check_keys(target, {"column", "positive", "negative"}, "target", file)
    columns = _mapping(top.get("columns"), "columns", file)
    try:
        specs = tuple(
            _column(str(name), _mapping(raw, f"columns.{name}", file), file)
            for name, raw in columns.items()
        )
        return Schema(
            name=_string(top.get("name"), "name", file),
            columns=specs,
            target=TargetRule(
                column=_string(target.get("column"), "target.column", file),
                positive=_strings(target.get("positive"), "target.positive", file),
                negative=_strings(target.get("negative"), "target.negative", file),
            ),
            patient_id=_string(top.get("patient_id"), "patient_id", file),
            missing_markers=_strings(top.get("missing_markers", []), "missing_markers", file),
            description=str(top.get("description", "")),
            source=file,
        )
    except SchemaError as exc:
        if exc.file is not None:
            raise
        error = SchemaError(str(exc), file=file)
        error.column = exc.column
        raise error from None


def _column(name: str, raw: Mapping[str, Any], file: str) -> ColumnSpec:
    where = f"columns.{name}"
    kind = raw.get("kind")
    if kind not in _KIND_KEYS:
        raise SchemaError(f"field {where}.kind: expected one of {sorted(_KIND_KEYS)}", file=file)
    _check_keys(raw, _COMMON_KEYS | _KIND_KEYS[kind], where, file)
    args: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "description": str(raw.get("description", "")),
        "missing": raw.get("missing", "error"),
        "missing_markers": _strings(
            raw.get("missing_markers", []), f"{where}.missing_markers", file
        ),
    }
    if "unseen" in raw:
        args["unseen"] = raw["unseen"]
    if "encode" in raw:
        args["encode"] = raw["encode"]
    if "log1p" in raw:
        if not isinstance(raw["log1p"], bool):
            raise SchemaError(f"field {where}.log1p: expected true or false", file=file)
        args["log1p"] = raw["log1p"]
    for key in ("values", "true_values", "false_values", "formats"):
        if key in raw:
            args[key] = _strings(raw[key], f"{where}.{key}", file)
    if "range" in raw and kind == "number":
        args["range"] = cast(
            tuple[float, float], _pair(raw["range"], f"{where}.range", file, float)
        )
    if "range" in raw and kind == "date":
        args["date_range"] = _pair(raw["range"], f"{where}.range", file, _date)
    if "impute" in raw:
        impute = raw["impute"]
        if kind == "date":
            impute = _pair([impute, impute], f"{where}.impute", file, _date)[0]
        elif kind == "number" and isinstance(impute, int | float) and not isinstance(impute, bool):
            impute = float(impute)
        elif kind == "category" and isinstance(impute, int) and not isinstance(impute, bool):
            impute = str(impute)
        args["impute"] = impute
    return ColumnSpec(**args)


def _mapping(value: Any, where: str, file: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SchemaError(f"field {where}: expected a mapping of key: value lines", file=file)
    return value


def _check_keys(raw: Mapping[str, Any], allowed: set[str], where: str, file: str) -> None:
    unknown = sorted(str(key) for key in raw if key not in allowed)
    if unknown:
        raise SchemaError(
            f"field {where}: unknown keys {unknown}; allowed here: {sorted(allowed)}", file=file
        )


def _string(value: Any, where: str, file: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int) or str(value).strip() == "":
        raise SchemaError(f"field {where}: expected a non-empty text value", file=file)
    return str(value)


def _strings(value: Any, where: str, file: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise SchemaError(f"field {where}: expected a list, e.g. [a, b]", file=file)
    for index, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, str | int):
            raise SchemaError(
                f"field {where}[{index}]: {item!r} is not text; write it in quotes", file=file
            )
    return tuple(str(item) for item in value)


def _pair(value: Any, where: str, file: str, convert: Any) -> tuple[Any, Any]:
    if not isinstance(value, list) or len(value) != 2 or any(isinstance(v, bool) for v in value):
        raise SchemaError(f"field {where}: expected [lo, hi]", file=file)
    try:
        return convert(value[0]), convert(value[1])
    except (TypeError, ValueError) as exc:
        raise SchemaError(f"field {where}: {exc}", file=file) from exc


def _date(value: Any) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        return dt.date.fromisoformat(value)
    raise ValueError(f"expected a date written as YYYY-MM-DD, got {value!r}")

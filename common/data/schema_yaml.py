"""Loading dataset schemas from YAML: bundled ``schemas/*.yaml`` files or a path on disk.

This is the only module that imports PyYAML. It reads the text strictly (duplicate keys are errors,
``No``/``Yes`` stay strings), checks the keys and value types of each mapping with strict pydantic
models (one per column kind: a key of another kind is an error), and turns the result into the
frozen dataclasses of :mod:`common.data.schema`, which then check their own consistency. Every
error is a SchemaError naming the file and the offending field.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainValidator,
    ValidationError,
)

from common.data.schema import (
    ColumnSpec,
    DateEncoding,
    MissingPolicy,
    Schema,
    TargetRule,
    UnseenPolicy,
)
from common.errors import SchemaError
from common.validation import Location, dotted_path, explain

FORMAT_VERSION = 1


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


def _text(value: object) -> str:
    # A YAML integer is read as its digits: ``- 250`` in a list of codes means the text "250".
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"{value!r} is not text; write it in quotes")


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("expected a non-empty text value")
    return value


def _list_as_tuple(value: object) -> tuple[Any, ...]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list, e.g. [a, b], got {value!r:.60}")
    return tuple(value)


def _pair(value: object) -> tuple[Any, ...]:
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError(f"expected [lo, hi], got {value!r:.60}")
    return tuple(value)


def _iso_date(value: object) -> object:
    if isinstance(value, dt.datetime):
        return value.date()
    return dt.date.fromisoformat(value) if isinstance(value, str) else value


def _supported(version: int) -> int:
    if version != FORMAT_VERSION:
        raise ValueError(f"unsupported version {version}; this release reads {FORMAT_VERSION}")
    return version


# Value types of the YAML format. Lists arrive as Python lists; strict pydantic wants tuples.
_Text = Annotated[str, PlainValidator(_text)]
_Name = Annotated[str, PlainValidator(_text), AfterValidator(_non_empty)]
_Texts = Annotated[tuple[_Text, ...], BeforeValidator(_list_as_tuple)]
_IsoDate = Annotated[dt.date, BeforeValidator(_iso_date)]  # a YAML date or "YYYY-MM-DD"
_NumberRange = Annotated[tuple[float, float], BeforeValidator(_pair)]
_DateRange = Annotated[tuple[_IsoDate, _IsoDate], BeforeValidator(_pair)]


_NOT_A_MAPPING = "expected a mapping of key: value lines"


class _Strict(BaseModel):
    """The YAML keys of one mapping and their types. A key left out (or written ``~``) takes the
    default of the dataclass it fills, which is why every optional key here defaults to None."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    def given(self, *keys: str) -> dict[str, Any]:
        """The values of ``keys`` (all keys if none are named) that the file sets."""
        return self.model_dump(include=set(keys) or None, exclude_none=True)


class _Column(_Strict):
    description: _Text | None = None
    missing: MissingPolicy | None = None
    missing_markers: _Texts | None = None


class _Number(_Column):
    kind: Literal["number"]
    range: _NumberRange | None = None
    log1p: bool | None = None
    impute: float | None = None


class _Category(_Column):
    kind: Literal["category"]
    values: _Texts | None = None
    unseen: UnseenPolicy | None = None
    impute: _Text | None = None


class _Boolean(_Column):
    kind: Literal["boolean"]
    true_values: _Texts | None = None
    false_values: _Texts | None = None
    impute: bool | None = None


class _Date(_Column):
    kind: Literal["date"]
    formats: _Texts | None = None
    encode: DateEncoding | None = None
    range: _DateRange | None = None
    impute: _IsoDate | None = None


class _Icd9(_Column):
    kind: Literal["icd9"]


class _Ignore(_Column):
    kind: Literal["ignore"]


_KINDS: dict[str, type[_Column]] = {
    "number": _Number,
    "category": _Category,
    "boolean": _Boolean,
    "date": _Date,
    "icd9": _Icd9,
    "ignore": _Ignore,
}


class _Target(_Strict):
    column: _Name
    positive: _Texts
    negative: _Texts


class _Document(_Strict):
    format_version: Annotated[int, AfterValidator(_supported)] = FORMAT_VERSION
    name: _Name
    description: _Text | None = None
    missing_markers: _Texts | None = None
    patient_id: _Name
    target: _Target
    columns: dict[_Name, dict[Any, Any]]  # each checked by the model of its kind


def bundled_schema_names() -> tuple[str, ...]:
    """Names of the schemas shipped with the package (``schemas/<name>.yaml``)."""
    folder = resources.files("common.data") / "schemas"
    return tuple(sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")))


def load_schema(name_or_path: str | os.PathLike[str]) -> Schema:
    """Load a bundled schema by name (``"diabetes130"``) or a schema YAML file by path.

    Raises SchemaError naming the file and the offending field when the file is unreadable,
    is not valid YAML, or describes an inconsistent schema.
    """
    file, text = _read(name_or_path)
    return parse_schema(text, file=file)


def schema_text(name_or_path: str | os.PathLike[str]) -> str:
    """The YAML text :func:`load_schema` reads for ``name_or_path`` (a model bundle keeps it, so
    that it stays readable without the file or this release's bundled schemas)."""
    return _read(name_or_path)[1]


def _read(name_or_path: str | os.PathLike[str]) -> tuple[str, str]:
    """The file a schema name or path means, and its text."""
    text_name = os.fspath(name_or_path)
    if text_name in bundled_schema_names():
        resource = resources.files("common.data") / "schemas" / f"{text_name}.yaml"
        return str(resource), resource.read_text(encoding="utf-8")
    path = Path(text_name)
    file = str(path)
    if not path.is_file():
        raise SchemaError(
            f"no such schema file, and not a bundled schema {list(bundled_schema_names())}",
            file=file,
        )
    try:
        return file, path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SchemaError(f"cannot read schema file: {exc}", file=file) from exc


def parse_schema(text: str, *, file: str = "<string>") -> Schema:
    """Build a Schema from YAML text; ``file`` only names the source in errors."""
    try:
        data = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: an integer beyond the digit limit
        raise SchemaError(f"not valid YAML: {exc}", file=file) from exc
    except SchemaError as exc:
        raise SchemaError(str(exc), file=file) from None
    try:
        document = _validated(_Document, data, ())
        return Schema(
            name=document.name,
            columns=tuple(_column(name, raw) for name, raw in document.columns.items()),
            target=TargetRule(**document.target.given()),
            patient_id=document.patient_id,
            source=file,
            **document.given("missing_markers", "description"),
        )
    except SchemaError as exc:
        if exc.file is not None:
            raise
        error = SchemaError(str(exc), file=file)
        error.column = exc.column
        raise error from None


def _column(name: str, raw: dict[Any, Any]) -> ColumnSpec:
    kind = raw.get("kind")
    model = _KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise SchemaError(f"field columns.{name}.kind: expected one of {sorted(_KINDS)}")
    args = _validated(model, raw, ("columns", name)).given()
    if kind == "date" and "range" in args:
        args["date_range"] = args.pop("range")
    return ColumnSpec(name=name, **args)


_ModelT = TypeVar("_ModelT", bound=_Strict)


def _validated(model: type[_ModelT], data: object, where: Location) -> _ModelT:
    """``data`` checked by ``model``; a SchemaError names the first bad field by its YAML path."""
    if not isinstance(data, dict):
        raise SchemaError(f"field {dotted_path(where) or 'the document'}: {_NOT_A_MAPPING}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        # Only the document nests a mapping (``target``); the columns' come here one by one.
        nested: dict[Location, type[_Strict]] = {("target",): _Target}
        problem = explain(
            exc,
            lambda loc: dotted_path((*where, *loc)),
            allowed=lambda parent: nested.get(parent, model).model_fields,
        )
        raise SchemaError(problem) from exc

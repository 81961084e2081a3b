"""Loading dataset schemas from YAML: bundled ``schemas/*.yaml`` files or a path on disk.

This is the only module that imports PyYAML. It reads the text strictly (duplicate keys and unknown
keys are errors, ``No``/``Yes`` stay strings) and turns it into the frozen dataclasses of
:mod:`common.data.schema`, which then validate themselves. Every error is a SchemaError naming the
file and the offending field.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, cast

import yaml

from common.data.schema import ColumnSpec, Schema, TargetRule
from common.errors import SchemaError

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

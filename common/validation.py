"""One-line explanations of pydantic validation errors, for the errors raised at our boundaries.

Untrusted structured input (control messages, persisted coordinator state, schema files) is
validated with pydantic; each boundary turns a ``pydantic.ValidationError`` into its own project
error with ``raise OurError(explain(exc, ...)) from exc``. The message names the first problem and
where it is, shows the offending value (truncated), and counts the others.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

from pydantic import ValidationError
from pydantic_core import ErrorDetails

Location = tuple[int | str, ...]

_MISSING = frozenset({"missing", "missing_argument", "missing_keyword_only_argument"})
_UNEXPECTED = frozenset({"extra_forbidden", "unexpected_keyword_argument"})
_NOT_A_MAPPING = frozenset({"model_type", "dataclass_type", "dataclass_exact_type"})


def missing_field(value: object, body: object, path: Callable[[Location], str]) -> str | None:
    """Name the first field of a dataclass in ``value`` absent from ``body``, or None.

    ``value`` was validated from the parsed JSON ``body``; nested dataclasses, and tuples of them,
    are followed. Pydantic fills in a field with a default, but our writers write every field, so
    a missing one means the input was cut or made by someone else: a default must not quietly
    stand in for it.
    """
    where = _first_missing(value, body, ())
    return None if where is None else f"missing field {path(where)}"


def _first_missing(value: object, body: object, where: Location) -> Location | None:
    children: Iterable[tuple[int | str, object, object]] = ()
    if dataclasses.is_dataclass(value) and isinstance(body, dict):
        names = [f.name for f in dataclasses.fields(value)]
        absent = [name for name in names if name not in body]
        if absent:
            return (*where, absent[0])
        children = ((name, getattr(value, name), body[name]) for name in names)
    elif isinstance(value, tuple) and isinstance(body, list):
        children = ((i, item, raw) for i, (item, raw) in enumerate(zip(value, body, strict=False)))
    for key, item, raw in children:
        found = _first_missing(item, raw, (*where, key))
        if found is not None:
            return found
    return None


def quoted_path(loc: Location) -> str:
    """``'metrics'['auc']``: a field and the keys or indexes under it, as Python writes them."""
    return "".join(repr(part) if i == 0 else f"[{part!r}]" for i, part in enumerate(loc))


def dotted_path(loc: Location) -> str:
    """``columns.age.range[0]``: the path as a YAML author reads it."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def explain(
    exc: ValidationError,
    path: Callable[[Location], str],
    *,
    allowed: Callable[[Location], Iterable[str]] | None = None,
) -> str:
    """The first problem of ``exc`` in one line, its location written by ``path``.

    ``allowed(parent)`` lists the keys accepted at ``parent``, named when a key is unexpected.
    """
    errors = exc.errors(include_url=False)
    text = _describe(errors[0], path, allowed)
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more)"
    return text


def _describe(
    error: ErrorDetails,
    path: Callable[[Location], str],
    allowed: Callable[[Location], Iterable[str]] | None,
) -> str:
    loc = tuple(part for part in error["loc"] if part != "[key]")
    kind = error["type"]
    if kind in _MISSING:
        return f"missing field {path(loc)}"
    if kind in _UNEXPECTED:
        hint = f"; allowed here: {sorted(allowed(loc[:-1]))}" if allowed is not None else ""
        return f"unexpected field {path(loc)}{hint}"
    if kind == "value_error" and "error" in error.get("ctx", {}):
        problem = str(error.get("ctx", {})["error"])  # our validators' own words, with the value
    else:
        message = "Input should be a mapping" if kind in _NOT_A_MAPPING else error["msg"]
        problem = f"{message}, got {_shorten(repr(error['input']))}"
    return f"field {path(loc)}: {problem}" if loc else problem


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."

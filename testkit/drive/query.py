"""The fake Drive's parsers: the ``q`` search language and the ``fields`` selector.

Both are strict the way Drive is: an unescaped quote, an unknown field or operator, a dangling
``and`` or an unknown field selection is an error (the server answers 400), never a guess.
Only what the fake implements is accepted; the rest of Drive's grammar is refused as such.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Predicate = Callable[[Mapping[str, Any]], bool]


class QueryError(ValueError):
    """Drive answers 400 ``Invalid Value`` (location ``q``)."""


class FieldsError(ValueError):
    """Drive answers 400 ``Invalid field selection ...`` (location ``fields``)."""


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>'(?:[^'\\]|\\.)*')
      | (?P<op>!=|<=|>=|=|<|>)
      | (?P<paren>[()])
      | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<bad>\S)
    )""",
    re.VERBOSE,
)
_STRING_FIELDS = {"name", "mimeType"}
_STRING_OPS = {"=", "!=", "contains"}
_COLLECTIONS = {"parents"}


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str


def _unquote(literal: str) -> str:
    body = literal[1:-1]
    out = []
    index = 0
    while index < len(body):
        char = body[index]
        if char == "\\":
            nxt = body[index + 1]
            if nxt not in ("'", "\\"):
                raise QueryError(f"invalid escape \\{nxt} in {literal}")
            out.append(nxt)
            index += 2
        else:
            out.append(char)
            index += 1
    return "".join(out)


def _tokens(query: str) -> list[_Token]:
    tokens = []
    position = 0
    query = query.rstrip()
    while position < len(query):
        match = _TOKEN.match(query, position)
        if match is None or match.lastgroup is None or match.lastgroup == "bad":
            raise QueryError(f"unexpected character at {position} in {query!r}")
        tokens.append(_Token(match.lastgroup, match.group(match.lastgroup)))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, query: str) -> None:
        self.tokens = _tokens(query)
        self.index = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self) -> _Token:
        token = self.peek()
        if token is None:
            raise QueryError("query ends too early")
        self.index += 1
        return token

    def keyword(self, word: str) -> bool:
        token = self.peek()
        if token is not None and token.kind == "word" and token.text.lower() == word:
            self.index += 1
            return True
        return False

    def parse(self) -> Predicate:
        if not self.tokens:
            raise QueryError("empty query")
        predicate = self.disjunction()
        if self.peek() is not None:
            raise QueryError(f"unexpected {self.peek().text!r}")  # type: ignore[union-attr]
        return predicate

    def disjunction(self) -> Predicate:
        terms = [self.conjunction()]
        while self.keyword("or"):
            terms.append(self.conjunction())
        return terms[0] if len(terms) == 1 else lambda item: any(t(item) for t in terms)

    def conjunction(self) -> Predicate:
        terms = [self.unary()]
        while self.keyword("and"):
            terms.append(self.unary())
        return terms[0] if len(terms) == 1 else lambda item: all(t(item) for t in terms)

    def unary(self) -> Predicate:
        if self.keyword("not"):
            inner = self.unary()
            return lambda item: not inner(item)
        token = self.peek()
        if token is not None and token.kind == "paren" and token.text == "(":
            self.take()
            inner = self.disjunction()
            closing = self.take()
            if closing.text != ")":
                raise QueryError("missing )")
            return inner
        return self.term()

    def term(self) -> Predicate:
        first = self.take()
        if first.kind == "string":
            value = _unquote(first.text)
            if not self.keyword("in"):
                raise QueryError(f"expected 'in' after {first.text}")
            collection = self.take()
            if collection.kind != "word" or collection.text not in _COLLECTIONS:
                raise QueryError(f"'in' needs one of {sorted(_COLLECTIONS)}, got {collection.text}")
            return lambda item: value in item.get(collection.text, [])
        if first.kind != "word":
            raise QueryError(f"unexpected {first.text!r}")
        field = first.text
        operator = self.take()
        op = operator.text.lower() if operator.kind == "word" else operator.text
        if operator.kind not in ("op", "word"):
            raise QueryError(f"expected an operator after {field}")
        if field in _STRING_FIELDS:
            if op not in _STRING_OPS:
                raise QueryError(f"operator {op} is not valid for {field}")
            literal = self.take()
            if literal.kind != "string":
                raise QueryError(f"{field} must be compared with a quoted string")
            text = _unquote(literal.text)
            if op == "=":
                return lambda item: item.get(field) == text
            if op == "!=":
                return lambda item: item.get(field) != text
            return lambda item: text.lower() in str(item.get(field, "")).lower()
        if field == "trashed":
            literal = self.take()
            if op not in ("=", "!=") or literal.text not in ("true", "false"):
                raise QueryError("trashed takes = or != with true or false")
            wanted = literal.text == "true"
            return lambda item: (bool(item.get("trashed")) == wanted) == (op == "=")
        raise QueryError(f"unknown or unsupported query field {field!r}")


def parse_query(query: str) -> Predicate:
    """A predicate over file resources, or ``QueryError`` for what Drive would refuse."""
    return _Parser(query).parse()


# -- fields --------------------------------------------------------------------------------------

FieldTree = dict[str, "FieldTree | None"]
_FIELD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*|\*")


def parse_fields(text: str) -> FieldTree:
    """``nextPageToken, files(id, name)`` -> ``{"nextPageToken": None, "files": {...}}``."""
    tree, position = _field_list(text.replace(" ", ""), 0)
    if position != len(text.replace(" ", "")):
        raise FieldsError(f"Invalid field selection {text}")
    return tree


def _field_list(text: str, position: int) -> tuple[FieldTree, int]:
    tree: FieldTree = {}
    while True:
        match = _FIELD_NAME.match(text, position)
        if match is None:
            raise FieldsError(f"Invalid field selection {text}")
        path = [match.group()]
        position = match.end()
        while position < len(text) and text[position] == "/":
            match = _FIELD_NAME.match(text, position + 1)
            if match is None:
                raise FieldsError(f"Invalid field selection {text}")
            path.append(match.group())
            position = match.end()
        sub: FieldTree | None = None
        if position < len(text) and text[position] == "(":
            sub, position = _field_list(text, position + 1)
            if position >= len(text) or text[position] != ")":
                raise FieldsError(f"Invalid field selection {text}")
            position += 1
        node = tree
        for name in path[:-1]:
            child = node.setdefault(name, {})
            node = child if child is not None else {}
        node[path[-1]] = sub
        if position < len(text) and text[position] == ",":
            position += 1
            continue
        return tree, position


def check_fields(tree: FieldTree | None, schema: Mapping[str, Any], where: str = "") -> None:
    """Every selected field must exist in ``schema`` (nested dicts; None for a leaf)."""
    if tree is None:
        return
    for name, sub in tree.items():
        if name == "*":
            continue
        if name not in schema:
            raise FieldsError(f"Invalid field selection {where}{name}")
        inner = schema[name]
        if sub is not None and not isinstance(inner, Mapping):
            raise FieldsError(f"Invalid field selection {where}{name}")
        if isinstance(inner, Mapping):
            check_fields(sub, inner, f"{where}{name}/")


def select(resource: Mapping[str, Any], tree: FieldTree | None) -> dict[str, Any]:
    """A partial response: only the selected fields (``*`` or no subtree: everything)."""
    if tree is None or "*" in tree:
        return dict(resource)
    out: dict[str, Any] = {}
    for name, sub in tree.items():
        if name not in resource:
            continue
        value = resource[name]
        if isinstance(value, list):
            out[name] = [select(v, sub) if isinstance(v, Mapping) else v for v in value]
        elif isinstance(value, Mapping) and sub is not None:
            out[name] = select(value, sub)
        else:
            out[name] = value
    return out


def requested(query: Mapping[str, str], schema: Mapping[str, Any], default: FieldTree) -> Any:
    """The field tree a request asks for (``fields``), or Drive's default; 400 if invalid."""
    from testkit.drive.model import invalid

    if "fields" not in query:
        return default
    try:
        tree = parse_fields(query["fields"])
        check_fields(tree, schema)
    except FieldsError as exc:
        raise invalid(str(exc), "fields") from exc
    return tree

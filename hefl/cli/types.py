"""Value types of the ``hefl`` flags: each turns one command-line or environment text into a value.

They raise ``argparse.ArgumentTypeError`` with what was expected, which argparse (for a flag) or
``hefl.cli.parser`` (for an environment variable) turns into a usage error.
"""

from __future__ import annotations

import argparse
import re
from typing import TypeVar

_Number = TypeVar("_Number", int, float)
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _parsed(text: str, kind: type[_Number], what: str) -> _Number:
    """``text`` as ``kind``, or the argparse error that expected ``what``."""
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def positive_int(text: str) -> int:
    value = _parsed(text, int, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = _parsed(text, float, "a number")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def port(text: str) -> int:
    """A TCP port; 0 asks the system for a free one (the process logs which)."""
    value = _parsed(text, int, "a port number")
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535, got {value}")
    return value


def non_negative_float(text: str) -> float:
    value = _parsed(text, float, "a number")
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = _parsed(text, int, "a whole number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def decay(text: str) -> float:
    """A decay rate (momentum, an Adam beta): at least 0 and below 1."""
    value = non_negative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, got {text}")
    return value


def fraction(text: str) -> float:
    value = positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def units(text: str) -> tuple[int, ...]:
    """``128,64`` -> (128, 64); an empty text is no hidden layer (logistic regression)."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from exc


def run_id(text: str) -> str:
    """A run id: it names a folder in every store, so letters, digits, '.', '_', '-'."""
    if not _RUN_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"a run id is 1-64 letters, digits, '.', '_' or '-' (not first), got {text!r}"
        )
    return text


def names(text: str) -> tuple[str, ...]:
    """``hospital-1,hospital-3`` -> ("hospital-1", "hospital-3")."""
    return tuple(part.strip() for part in text.split(",") if part.strip())

"""Structured logging: one event per line, ``key=value`` fields.

Every line about a run carries ``run``, ``round`` and ``hospital`` where they are known, so that
the logs of many containers can be merged and filtered with grep.
"""

from __future__ import annotations

import logging
from typing import Any


def _format_value(value: Any) -> str:
    text = f"{value:.6g}" if isinstance(value, float) else str(value)
    if text == "" or any(ch in text for ch in ' ="'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def format_event(event: str, **fields: Any) -> str:
    """Render ``event key=value ...``; fields whose value is None are left out."""
    parts = [event]
    parts.extend(
        f"{key}={_format_value(value)}" for key, value in fields.items() if value is not None
    )
    return " ".join(parts)


def log_event(
    logger: logging.Logger, event: str, *, level: int = logging.INFO, **fields: Any
) -> None:
    """Log one structured event."""
    if logger.isEnabledFor(level):
        logger.log(level, format_event(event, **fields))


def configure(level: str = "INFO") -> None:
    """Set up plain ``time level logger message`` lines on stderr (used by the CLI only)."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )

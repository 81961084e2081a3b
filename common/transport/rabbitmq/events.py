"""Structured log events of the RabbitMQ transport, all on one logger named after the package.

Every module of the package logs through ``LOG`` (``common.transport.rabbitmq``), the name the
transport has always logged under, so log lines and logging settings stay as they were. Each event
carries the transport's identity.

pika's own log lines (tracebacked, repetitive) are silenced unless the application set a level on
the ``pika`` logger: every failure pika logs reaches these events as an ``error`` field.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from common.logs import format_event, log_event

LOG = logging.getLogger(__package__)

_PIKA_LOG = logging.getLogger("pika")
if _PIKA_LOG.level == logging.NOTSET:  # unless the application chose
    _PIKA_LOG.setLevel(logging.CRITICAL)


@dataclass(frozen=True)
class Events:
    """The event log of one transport: every event names the identity it comes from."""

    identity: str

    def __call__(self, event: str, *, level: int = logging.INFO, **fields: Any) -> None:
        log_event(LOG, event, level=level, identity=self.identity, **fields)

    def error_with_traceback(self, event: str, **fields: Any) -> None:
        """Log an error event with the traceback of the exception being handled."""
        LOG.error(format_event(event, identity=self.identity, **fields), exc_info=True)

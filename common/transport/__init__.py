"""Message transports: the protocol and its implementations.

The RabbitMQ names are imported on first use, so the in-memory transport (embedded simulation,
unit tests) never loads pika.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from common.transport.base import ANNOUNCE, SUBMIT, TOPICS, Handler, SenderHandler, Transport
from common.transport.inmemory import InMemoryParticipant, InMemoryTransport
from common.transport.settings import BROKER_URL_ENV, Backoff, broker_url

if TYPE_CHECKING:
    from common.transport.rabbitmq import RabbitMQTransport

_RABBITMQ = frozenset({"RabbitMQTransport"})

__all__ = [
    "ANNOUNCE",
    "BROKER_URL_ENV",
    "SUBMIT",
    "TOPICS",
    "Backoff",
    "Handler",
    "InMemoryParticipant",
    "InMemoryTransport",
    "RabbitMQTransport",
    "SenderHandler",
    "Transport",
    "broker_url",
]


def __getattr__(name: str) -> Any:
    if name in _RABBITMQ:
        from common.transport import rabbitmq

        return getattr(rabbitmq, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

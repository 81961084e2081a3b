"""What other threads hand the I/O thread, and what it hands back to ``serve``.

A pika connection is not thread safe, so only the I/O thread touches it: other threads queue a
command and wait on its future. Deliveries travel the other way, through the sink ``serve``
reads. Delivery tags belong to a consumer channel, so each channel gets a new generation and an
ack carries the generation of its delivery: one for a channel that is gone is dropped (the broker
redelivers that message) instead of acking the wrong one.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TypeAlias

from common.errors import TransportError


@dataclass
class Publish:
    """Send one message; ``done`` resolves once the broker confirmed it (or gave up on it)."""

    topic: str
    body: bytes
    done: Future[None] = field(default_factory=Future)
    failures: int = 0  # nacks and unroutable returns so far, across reconnects


@dataclass(frozen=True)
class Ack:
    tag: int
    generation: int


@dataclass(frozen=True)
class Sync:
    """Bring the connection in line with the wanted subscriptions and consuming state."""

    done: Future[None] = field(default_factory=Future)


Command: TypeAlias = Publish | Ack | Sync


@dataclass(frozen=True)
class Delivery:
    topic: str
    tag: int
    body: bytes
    redelivered: bool
    generation: int
    user_id: str | None = None  # the publisher's broker user, checked by the broker when set


Sink: TypeAlias = queue.Queue[Delivery | TransportError]


@dataclass(frozen=True)
class Wanted:
    """What the transport's users want now: topics with handlers, and the sink while serving."""

    topics: frozenset[str]
    sink: Sink | None


def fail(command: Command, error: TransportError) -> None:
    """Release whoever waits on ``command`` with ``error`` (acks have nobody waiting)."""
    if not isinstance(command, Ack) and not command.done.done():
        command.done.set_exception(error)


class Generation:
    """Counts consumer channels (and lost connections); older generations' tags are void."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0

    @property
    def current(self) -> int:
        return self._value

    def advance(self) -> int:
        with self._lock:
            self._value += 1
            return self._value

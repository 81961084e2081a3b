"""In-process transport for the embedded simulation and the tests.

Messages queue up in publication order and are delivered by ``deliver_all``, never from inside
``publish``: handlers that publish do not recurse, and a test can inspect or inject messages
between deliveries.

Each participant gets its own face of the bus with ``participant(identity)``: what it publishes
carries its identity as the sender, as a RabbitMQ message carries its connection's user. A message
published on the bus itself carries the ``sender`` given, or none: it reaches plain handlers, and
a sender handler drops it (counted in ``dropped``), as the RabbitMQ transport drops a message
without a ``user_id``.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict, deque
from dataclasses import dataclass

from common.errors import TransportError
from common.logs import log_event
from common.transport.base import TOPICS, Handler, SenderHandler

LOG = logging.getLogger(__name__)


class InMemoryTransport:
    """A FIFO bus shared by every participant of one process."""

    def __init__(self) -> None:
        self._queue: deque[tuple[str, bytes, str | None]] = deque()
        # in subscription order; a plain handler is kept as (handler, None)
        self._handlers: dict[str, list[tuple[Handler | None, SenderHandler | None]]] = defaultdict(
            list
        )
        self.published: dict[str, int] = defaultdict(int)
        self.dropped: Counter[str] = Counter()

    def publish(self, topic: str, body: bytes, *, sender: str | None = None) -> None:
        _check(topic)
        self._queue.append((topic, bytes(body), sender))
        self.published[topic] += 1

    def subscribe(self, topic: str, handler: Handler) -> None:
        _check(topic)
        self._handlers[topic].append((handler, None))

    def subscribe_with_sender(self, topic: str, handler: SenderHandler) -> None:
        _check(topic)
        self._handlers[topic].append((None, handler))

    def participant(self, identity: str) -> InMemoryParticipant:
        """This bus as one participant sees it: its messages carry ``identity`` as sender."""
        return InMemoryParticipant(self, identity)

    @property
    def pending(self) -> int:
        return len(self._queue)

    def deliver_all(self, limit: int = 1_000_000) -> int:
        """Deliver queued messages (and those their handlers publish); return how many."""
        delivered = 0
        while self._queue and delivered < limit:
            topic, body, sender = self._queue.popleft()
            handlers = list(self._handlers[topic])
            if sender is None and any(wants is not None for _, wants in handlers):
                self.dropped["unauthenticated"] += 1
                log_event(LOG, "delivery_dropped", topic=topic, reason="unauthenticated")
            for plain, wants in handlers:
                if plain is not None:
                    plain(body)
                elif sender is not None and wants is not None:
                    wants(body, sender)
            delivered += 1
        return delivered


@dataclass(frozen=True)
class InMemoryParticipant:
    """One participant's face of an ``InMemoryTransport``: a Transport that signs its sends."""

    bus: InMemoryTransport
    identity: str

    def publish(self, topic: str, body: bytes) -> None:
        self.bus.publish(topic, body, sender=self.identity)

    def subscribe(self, topic: str, handler: Handler) -> None:
        self.bus.subscribe(topic, handler)

    def subscribe_with_sender(self, topic: str, handler: SenderHandler) -> None:
        self.bus.subscribe_with_sender(topic, handler)


def _check(topic: str) -> None:
    if topic not in TOPICS:
        raise TransportError(f"unknown topic {topic!r}")

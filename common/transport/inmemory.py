"""In-process transport for the embedded simulation and the tests.

Messages queue up in publication order and are delivered by ``deliver_all``, never from inside
``publish``: handlers that publish do not recurse, and a test can inspect or inject messages
between deliveries.
"""

from __future__ import annotations

from collections import defaultdict, deque

from common.errors import TransportError
from common.transport.base import TOPICS, Handler


class InMemoryTransport:
    """A FIFO bus shared by every participant of one process."""

    def __init__(self) -> None:
        self._queue: deque[tuple[str, bytes]] = deque()
        self._handlers: dict[str, list[Handler]] = defaultdict(list)
        self.published: dict[str, int] = defaultdict(int)

    def publish(self, topic: str, body: bytes) -> None:
        if topic not in TOPICS:
            raise TransportError(f"unknown topic {topic!r}")
        self._queue.append((topic, bytes(body)))
        self.published[topic] += 1

    def subscribe(self, topic: str, handler: Handler) -> None:
        if topic not in TOPICS:
            raise TransportError(f"unknown topic {topic!r}")
        self._handlers[topic].append(handler)

    @property
    def pending(self) -> int:
        return len(self._queue)

    def deliver_all(self, limit: int = 1_000_000) -> int:
        """Deliver queued messages (and those their handlers publish); return how many."""
        delivered = 0
        while self._queue and delivered < limit:
            topic, body = self._queue.popleft()
            for handler in list(self._handlers[topic]):
                handler(body)
            delivered += 1
        return delivered

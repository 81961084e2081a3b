"""The Transport seam: small signed control messages between coordinator and hospitals.

Two topics exist. ``ANNOUNCE`` fans out from the coordinator to every hospital; ``SUBMIT`` carries
hospitals' replies to the coordinator. Delivery is at least once, so handlers are idempotent.

A ``SenderHandler`` also receives the message's authenticated sender: the participant whose
credentials published it, as established by the transport (RabbitMQ checks a message's
``user_id`` against its connection's user), never as claimed inside the message. A receiver
compares the two to refuse a participant speaking for another.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol

ANNOUNCE: Final = "announce"
SUBMIT: Final = "submit"
TOPICS: Final = (ANNOUNCE, SUBMIT)

Handler = Callable[[bytes], None]
SenderHandler = Callable[[bytes, str], None]  # (body, authenticated sender)


class Transport(Protocol):
    """Publish bytes on a topic; deliver every message of a topic to its subscribers."""

    def publish(self, topic: str, body: bytes) -> None: ...

    def subscribe(self, topic: str, handler: Handler) -> None: ...

    def subscribe_with_sender(self, topic: str, handler: SenderHandler) -> None:
        """Like ``subscribe``; the handler also gets the authenticated sender of each message.

        A message whose sender cannot be established is dropped (logged and counted) instead.
        """
        ...

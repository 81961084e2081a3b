"""The Transport seam: small signed control messages between coordinator and hospitals.

Two topics exist. ``ANNOUNCE`` fans out from the coordinator to every hospital; ``SUBMIT`` carries
hospitals' replies to the coordinator. Delivery is at least once, so handlers are idempotent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol

ANNOUNCE: Final = "announce"
SUBMIT: Final = "submit"
TOPICS: Final = (ANNOUNCE, SUBMIT)

Handler = Callable[[bytes], None]


class Transport(Protocol):
    """Publish bytes on a topic; deliver every message of a topic to its subscribers."""

    def publish(self, topic: str, body: bytes) -> None: ...

    def subscribe(self, topic: str, handler: Handler) -> None: ...

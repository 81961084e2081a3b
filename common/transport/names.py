"""Broker resource names of one deployment (``prefix``), with no I/O and no pika.

The RabbitMQ topology (``rabbitmq.topology``) declares these names and the broker configuration
(``brokerconf``) grants permissions on them, so both read them from here:

- ``<prefix>.announce``: fanout exchange; ANNOUNCE is published there by the coordinator.
- ``<prefix>.announce.<identity>``: a participant's own queue, bound to that exchange.
- ``<prefix>.submit``: direct exchange; SUBMIT is published there by the hospitals.
- ``<prefix>.submit.coordinator``: the coordinator's queue, bound to it with its own name as key.

No exchange shares its name with a queue: RabbitMQ permissions are regular expressions over
resource names whatever their kind, so a shared name would grant on both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from common.errors import ConfigError

#: The coordinator's identity, as ``common.protocol.signing.COORDINATOR`` (a test checks they
#: agree); not imported from there, so the broker set-up runs without the protocol's dependencies.
COORDINATOR: Final = "coordinator"
NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")

__all__ = ["COORDINATOR", "NAME", "Names", "check_name"]


def check_name(kind: str, value: str) -> None:
    """Refuse a prefix or identity that could not be an exact part of a resource name."""
    if not NAME.fullmatch(value):
        raise ConfigError(f"{kind} {value!r} must match {NAME.pattern}")


@dataclass(frozen=True)
class Names:
    """Exchange and queue names of one deployment."""

    prefix: str

    def __post_init__(self) -> None:
        check_name("prefix", self.prefix)

    @property
    def announce_exchange(self) -> str:
        return f"{self.prefix}.announce"

    @property
    def submit_exchange(self) -> str:
        return f"{self.prefix}.submit"

    @property
    def submit_queue(self) -> str:
        """The one queue SUBMIT reaches; also its routing key on the submit exchange."""
        return f"{self.prefix}.submit.{COORDINATOR}"

    def announce_queue(self, identity: str) -> str:
        check_name("identity", identity)
        return f"{self.prefix}.announce.{identity}"

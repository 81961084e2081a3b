"""The broker topology of one prefix and identity: names, idempotent declarations, refusals.

The names are ``common.transport.names``: ANNOUNCE goes to the ``<prefix>.announce`` fanout
exchange, which every hospital's ``<prefix>.announce.<identity>`` queue is bound to (a hospital
keeps the announcements sent while it was away); SUBMIT goes to the ``<prefix>.submit`` direct
exchange, routed to the coordinator's queue, ``mandatory`` so that a missing queue is noticed
instead of dropping the message.

Each participant declares only what it owns, which is all its broker user may configure
(``brokerconf``): the coordinator the two exchanges and its queue, a hospital its own queue and
binding. A hospital only checks (passively) that the exchanges exist; until the coordinator (or
the broker's definitions) declares them it keeps reconnecting, with a log line saying so.

Declaring is idempotent and happens on every (re)connect. A broker that refuses the topology
(access refused, or a queue of the same name declared with other arguments) will refuse it again
on every retry, so that refusal ends in a TransportError instead of a reconnect loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import pika
import pika.exceptions

from common.errors import TransportError
from common.transport.base import ANNOUNCE, TOPICS
from common.transport.names import COORDINATOR, Names, check_name
from common.transport.rabbitmq.events import Events

FATAL_REPLY_CODES: Final = (403, 406)  # access refused, precondition failed: retrying cannot help
NOT_FOUND: Final = 404


class SharedTopologyMissing(Exception):
    """An exchange the coordinator declares does not exist yet; reconnecting checks again."""


def check_topic(topic: str) -> None:
    if topic not in TOPICS:
        raise TransportError(f"unknown topic {topic!r}")


@dataclass(frozen=True)
class Topology:
    """Exchange and queue names of one participant (``identity``) in one deployment (``prefix``)."""

    identity: str
    prefix: str

    def __post_init__(self) -> None:
        check_name("identity", self.identity)
        check_name("prefix", self.prefix)

    @property
    def names(self) -> Names:
        return Names(self.prefix)

    @property
    def exchange(self) -> str:
        return self.names.announce_exchange

    @property
    def submit_exchange(self) -> str:
        return self.names.submit_exchange

    @property
    def announce_queue(self) -> str:
        return self.names.announce_queue(self.identity)

    @property
    def submit_queue(self) -> str:
        return self.names.submit_queue

    @property
    def owns_shared(self) -> bool:
        """True for the coordinator, which declares the exchanges and the submit queue."""
        return self.identity == COORDINATOR

    def queue(self, topic: str) -> str:
        """The queue this participant consumes ``topic`` from."""
        return self.announce_queue if topic == ANNOUNCE else self.submit_queue

    def route(self, topic: str) -> tuple[str, str]:
        """Exchange and routing key to publish ``topic`` with."""
        if topic == ANNOUNCE:
            return self.exchange, ""
        return self.submit_exchange, self.submit_queue

    def declare_shared(self, channel: Any, events: Events) -> None:
        """The coordinator declares the exchanges and its bound queue; others check they exist."""
        fanout = pika.exchange_type.ExchangeType.fanout
        direct = pika.exchange_type.ExchangeType.direct
        if not self.owns_shared:
            for name, kind in ((self.exchange, fanout), (self.submit_exchange, direct)):
                try:
                    channel.exchange_declare(name, exchange_type=kind, passive=True)
                except pika.exceptions.ChannelClosedByBroker as exc:
                    if exc.reply_code != NOT_FOUND:
                        raise
                    raise SharedTopologyMissing(
                        f"exchange {name!r} does not exist yet: waiting for the coordinator "
                        "(or the broker's definitions) to declare it"
                    ) from exc
            return
        channel.exchange_declare(self.exchange, exchange_type=fanout, durable=True)
        channel.exchange_declare(self.submit_exchange, exchange_type=direct, durable=True)
        channel.queue_declare(self.submit_queue, durable=True)
        channel.queue_bind(self.submit_queue, self.submit_exchange, routing_key=self.submit_queue)
        events("amqp_declared", exchange=self.submit_exchange, queue=self.submit_queue)

    def declare_announce_queue(self, channel: Any, events: Events) -> None:
        """Declare this participant's announce queue and bind it to the exchange."""
        channel.queue_declare(self.announce_queue, durable=True)
        channel.queue_bind(self.announce_queue, self.exchange, routing_key=self.announce_queue)
        events("amqp_declared", exchange=self.exchange, queue=self.announce_queue)

    @contextmanager
    def refusals_are_fatal(self, endpoint: str) -> Iterator[None]:
        """Turn the broker's refusal of this topology into a TransportError; pass other closes."""
        try:
            yield
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code not in FATAL_REPLY_CODES:
                raise
            raise TransportError(
                f"RabbitMQ at {endpoint} rejected the topology of prefix "
                f"{self.prefix!r} for {self.identity!r}: {exc.reply_text}"
            ) from exc

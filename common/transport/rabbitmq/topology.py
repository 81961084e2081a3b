"""The broker topology of one prefix and identity: names, idempotent declarations, refusals.

- ``<prefix>.announce``: durable fanout exchange; ANNOUNCE is published there.
- ``<prefix>.announce.<identity>``: a subscriber's own durable queue bound to that exchange, created
  when it subscribes to ANNOUNCE, so a hospital keeps the announcements sent while it was away.
- ``<prefix>.submit``: the coordinator's durable queue; SUBMIT goes there through the default
  exchange, ``mandatory`` so that a missing queue is noticed instead of dropping the message.

Declaring is idempotent and happens on every (re)connect. A broker that refuses the topology
(access refused, or a queue of the same name declared with other arguments) will refuse it again
on every retry, so that refusal ends in a TransportError instead of a reconnect loop.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import pika
import pika.exceptions

from common.errors import ConfigError, TransportError
from common.transport.base import ANNOUNCE, TOPICS
from common.transport.rabbitmq.events import Events

NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
FATAL_REPLY_CODES: Final = (403, 406)  # access refused, precondition failed: retrying cannot help


def check_topic(topic: str) -> None:
    if topic not in TOPICS:
        raise TransportError(f"unknown topic {topic!r}")


@dataclass(frozen=True)
class Topology:
    """Exchange and queue names of one participant (``identity``) in one deployment (``prefix``)."""

    identity: str
    prefix: str

    def __post_init__(self) -> None:
        for name, value in (("identity", self.identity), ("prefix", self.prefix)):
            if not NAME.fullmatch(value):
                raise ConfigError(f"{name} {value!r} must match {NAME.pattern}")

    @property
    def exchange(self) -> str:
        return f"{self.prefix}.announce"

    @property
    def announce_queue(self) -> str:
        return f"{self.prefix}.announce.{self.identity}"

    @property
    def submit_queue(self) -> str:
        return f"{self.prefix}.submit"

    def queue(self, topic: str) -> str:
        """The queue this participant consumes ``topic`` from."""
        return self.announce_queue if topic == ANNOUNCE else self.submit_queue

    def route(self, topic: str) -> tuple[str, str]:
        """Exchange and routing key to publish ``topic`` with."""
        return (self.exchange, "") if topic == ANNOUNCE else ("", self.submit_queue)

    def declare_shared(self, channel: Any, events: Events) -> None:
        """Declare what every participant publishes to: the announce exchange, the submit queue."""
        channel.exchange_declare(
            self.exchange, exchange_type=pika.exchange_type.ExchangeType.fanout, durable=True
        )
        channel.queue_declare(self.submit_queue, durable=True)
        events("amqp_declared", exchange=self.exchange, queue=self.submit_queue)

    def declare_announce_queue(self, channel: Any, events: Events) -> None:
        """Declare this participant's announce queue and bind it to the exchange."""
        channel.queue_declare(self.announce_queue, durable=True)
        channel.queue_bind(self.announce_queue, self.exchange)
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
                f"{self.prefix!r}: {exc.reply_text}"
            ) from exc

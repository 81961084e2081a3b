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

Both queues are quorum queues by default (``queue_type``): replicated by Raft over the nodes of
a broker cluster, so a message the broker confirmed survives the loss of any one node of three,
and the same on a single node. A queue's type is fixed when it is made: one made by an older hefl
(classic, no ``x-queue-type``) is refused as "inequivalent", and the TransportError says how to
replace it.

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

from common.errors import TransportError
from common.transport.base import ANNOUNCE, TOPICS
from common.transport.names import COORDINATOR, Names, check_name
from common.transport.rabbitmq.events import Events
from common.transport.settings import DEFAULT_QUEUE_TYPE, QueueType, queue_arguments

FATAL_REPLY_CODES: Final = (403, 406)  # access refused, precondition failed: retrying cannot help
NOT_FOUND: Final = 404
PRECONDITION_FAILED: Final = 406
_INEQUIVALENT_TYPE: Final = re.compile(
    r"inequivalent arg 'x-queue-type' for queue '(?P<queue>[^']*)' in vhost '(?P<vhost>[^']*)'"
)


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
    queue_type: QueueType = DEFAULT_QUEUE_TYPE

    def __post_init__(self) -> None:
        check_name("identity", self.identity)
        check_name("prefix", self.prefix)
        queue_arguments(self.queue_type)  # checks the type

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
        arguments = queue_arguments(self.queue_type)
        channel.queue_declare(self.submit_queue, durable=True, arguments=arguments)
        channel.queue_bind(self.submit_queue, self.submit_exchange, routing_key=self.submit_queue)
        events("amqp_declared", exchange=self.submit_exchange, queue=self.submit_queue)

    def declare_announce_queue(self, channel: Any, events: Events) -> None:
        """Declare this participant's announce queue and bind it to the exchange."""
        arguments = queue_arguments(self.queue_type)
        channel.queue_declare(self.announce_queue, durable=True, arguments=arguments)
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
            found = _INEQUIVALENT_TYPE.search(exc.reply_text or "")
            if exc.reply_code == PRECONDITION_FAILED and found:
                raise self._other_queue_type(endpoint, found["queue"], found["vhost"]) from exc
            raise TransportError(
                f"RabbitMQ at {endpoint} rejected the topology of prefix "
                f"{self.prefix!r} for {self.identity!r}: {exc.reply_text}"
            ) from exc

    def _other_queue_type(self, endpoint: str, queue: str, vhost: str) -> TransportError:
        """The error for a queue made with another type than this transport declares."""
        return TransportError(
            f"RabbitMQ at {endpoint} holds the queue {queue!r} as another queue type than the "
            f"{self.queue_type} queue hefl declares (it was made by an older hefl, or another "
            "deployment); a queue's type cannot change. Once no run needs what it holds, delete "
            f"it (rabbitmqctl delete_queue -p {vhost} {queue}): its owner declares it again when "
            "it connects"
        )

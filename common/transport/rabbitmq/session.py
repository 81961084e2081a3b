"""One live connection and its channels, used by the I/O thread only.

A session opens the connection, a publisher channel in confirm mode and the topology, then
carries out the commands of other threads. While ``serve`` runs it also holds a consumer channel
with prefetch 1: the broker hands out one message at a time and redelivers it if the connection
goes before its ack. Deliveries go to the sink of the ``serve`` call they were consumed for, so a
new ``serve`` (or a new connection) starts a new consumer channel and a new generation.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

import pika
import pika.exceptions

from common.transport.base import ANNOUNCE
from common.transport.rabbitmq.commands import (
    Ack,
    Command,
    Delivery,
    Generation,
    Sink,
    Sync,
    Wanted,
)
from common.transport.rabbitmq.events import Events
from common.transport.rabbitmq.publisher import Publisher
from common.transport.rabbitmq.topology import SharedTopologyMissing, Topology


class ChannelLost(Exception):
    """A channel closed or a consumer was cancelled under us: treated like a lost connection."""


DISCONNECTS: Final = (pika.exceptions.AMQPError, OSError, ChannelLost, SharedTopologyMissing)
REFUSED: Final = (
    pika.exceptions.ProbableAuthenticationError,
    pika.exceptions.ProbableAccessDeniedError,
    pika.exceptions.AuthenticationError,
    pika.exceptions.IncompatibleProtocolError,
)


@dataclass(frozen=True)
class Wiring:
    """What every session of one transport shares, from one connection to the next."""

    topology: Topology
    endpoint: str  # the broker URL without password, for errors
    publisher: Publisher
    wanted: Callable[[], Wanted]  # read from the transport's users at each sync
    generation: Generation
    events: Events


class Session:
    """One connection with its publisher channel and, while serving, its consumer channel."""

    def __init__(self, connection: Any, publisher: Any, wiring: Wiring) -> None:
        self.connection = connection
        self._publisher = publisher
        self._wiring = wiring
        self._consumer: Any = None
        self._sink: Sink | None = None
        self._generation = 0
        self._consuming: set[str] = set()
        self._declared: set[str] = set()
        self._cancelled = False

    @classmethod
    def open(cls, params: Any, wiring: Wiring) -> Session:
        """Connect, declare the topology and consume what is wanted; close again on failure."""
        connection = pika.BlockingConnection(params)
        try:
            publisher = connection.channel()
            publisher.confirm_delivery()
            session = cls(connection, publisher, wiring)
            session._declare(shared=True)
            session._sync()
        except BaseException:
            with contextlib.suppress(Exception):
                connection.close()
            raise
        return session

    def execute(self, command: Command) -> None:
        """Carry out one command; a lost connection or channel propagates (see DISCONNECTS)."""
        events = self._wiring.events
        if isinstance(command, Ack):
            if command.generation != self._generation or not self._consumer:
                events("amqp_ack_dropped", tag=command.tag, note="channel gone; broker redelivers")
                return
            self._consumer.basic_ack(command.tag)
            events("amqp_ack", level=logging.DEBUG, tag=command.tag)
        elif isinstance(command, Sync):
            self._sync()
            command.done.set_result(None)
        else:
            self._wiring.publisher.publish(
                command,
                self._publisher,
                sleep=self.connection.sleep,  # services the connection while it waits
                redeclare=partial(self._declare, shared=True),
                renew=self._renew_publisher,
            )

    def pump(self, seconds: float) -> None:
        """Let pika do its I/O (heartbeats, deliveries) for up to ``seconds``."""
        self.connection.process_data_events(time_limit=seconds)
        if self._cancelled or not self._publisher.is_open:
            raise ChannelLost("a channel was closed or a consumer cancelled by the broker")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.connection.close()

    def _renew_publisher(self) -> Any:
        """A new confirming publisher channel in place of the current one (see ``publisher``)."""
        with contextlib.suppress(pika.exceptions.AMQPError):
            self._publisher.close()
        self._publisher = self.connection.channel()
        self._publisher.confirm_delivery()
        self._wiring.events("amqp_publisher_renewed", level=logging.DEBUG)
        return self._publisher

    def _declare(self, *, shared: bool = False) -> None:
        topology, events = self._wiring.topology, self._wiring.events
        with topology.refusals_are_fatal(self._wiring.endpoint):
            if shared:
                topology.declare_shared(self._publisher, events)
            if ANNOUNCE in self._wiring.wanted().topics and ANNOUNCE not in self._declared:
                topology.declare_announce_queue(self._publisher, events)
                self._declared.add(ANNOUNCE)

    def _sync(self) -> None:
        self._declare()
        wanted, events = self._wiring.wanted(), self._wiring.events
        if self._consumer is not None and self._sink is not wanted.sink:
            self._consumer.close()
            self._consumer, self._sink = None, None
            self._consuming.clear()
            events("amqp_consuming_stopped")
        if wanted.sink is None:
            return
        if self._consumer is None:
            self._consumer = self.connection.channel()
            self._consumer.basic_qos(prefetch_count=1)
            self._consumer.add_on_cancel_callback(self._on_cancel)
            self._sink = wanted.sink
            self._generation = self._wiring.generation.advance()
        for topic in sorted(wanted.topics - self._consuming):
            name = self._wiring.topology.queue(topic)
            callback = partial(_deliver, wanted.sink, topic, self._generation)
            self._consumer.basic_consume(name, callback, auto_ack=False)
            self._consuming.add(topic)
            events("amqp_consuming", topic=topic, queue=name, prefetch=1)

    def _on_cancel(self, _frame: Any) -> None:
        self._cancelled = True  # the queue was deleted: reconnecting declares it again


def _deliver(
    sink: Sink,
    topic: str,
    generation: int,
    _channel: Any,
    method: Any,
    properties: Any,
    body: bytes,
) -> None:
    sink.put(
        Delivery(
            topic,
            method.delivery_tag,
            body,
            bool(method.redelivered),
            generation,
            user_id=properties.user_id,
        )
    )

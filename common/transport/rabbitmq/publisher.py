"""Publishing with confirms: ``publish`` returns once the broker has taken a persistent message.

The publisher channel is in confirm mode and every message is ``mandatory``. A nack, or a SUBMIT
the broker cannot route (its queue was deleted: it is declared again), is retried after a
``Backoff`` delay, up to ``attempts`` tries in all. A nack also retires the channel: a channel
whose first message to a quorum queue was nacked because the queue's leader had just gone (its
node lost) keeps nacking every message to that queue, while a new channel reaches the new leader
(measured on RabbitMQ 3.10.8: the old channel still nacked 15 s later, a new one took the
message 0.5 s after the node was killed). The count lives on the command, so it goes on
across reconnects: a lost connection is not a failure of the message, the I/O thread just sends
it again on the next connection. An ANNOUNCE nobody can receive yet is only a warning: hospitals
that subscribe later say Hello and are brought up to date.

Every message carries the connection's user as its ``user_id``. RabbitMQ closes the channel of a
publisher whose ``user_id`` is not its own user, so a subscriber can trust it as the sender.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions
import tenacity

from common.errors import TransportError
from common.transport.base import ANNOUNCE
from common.transport.rabbitmq.commands import Publish
from common.transport.rabbitmq.events import Events
from common.transport.rabbitmq.topology import Topology
from common.transport.settings import Backoff


class NotTaken(Exception):
    """The broker answered but did not take the message (``reason``); another try may work."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Publisher:
    """Sends the messages of one participant, retrying those the broker did not take."""

    def __init__(
        self,
        topology: Topology,
        *,
        attempts: int,
        backoff: Backoff,
        endpoint: str,
        events: Events,
        user: str | None,
    ) -> None:
        self._topology = topology
        self._attempts = attempts
        self._backoff = backoff
        self._endpoint = endpoint
        self._events = events
        self._properties = pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent,
            content_type="application/octet-stream",
            app_id=topology.identity,
            user_id=user,
        )

    def publish(
        self,
        command: Publish,
        channel: Any,
        *,
        sleep: Callable[[float], None],
        redeclare: Callable[[], None],
        renew: Callable[[], Any],
    ) -> None:
        """Send ``command`` on the confirming ``channel`` and resolve its future.

        ``sleep`` waits between tries while keeping the connection serviced; ``redeclare``
        restores the topology after an unroutable SUBMIT; ``renew`` replaces the channel after
        a nack and returns the new one. Anything else that goes wrong (a lost connection, a
        refused topology) propagates with the command unresolved.
        """
        channels = [channel]  # the one the next try uses
        fields: dict[str, Any] = {"topic": command.topic, "bytes": len(command.body)}

        def log_retry(state: tenacity.RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome is not None else None
            reason = error.reason if isinstance(error, NotTaken) else None
            self._events(
                "amqp_publish_retry",
                level=logging.WARNING,
                **fields,
                reason=reason,
                attempt=command.failures,
            )

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(NotTaken),  # anything else propagates
            stop=lambda _: command.failures >= self._attempts,
            wait=lambda _: self._backoff.delay(command.failures, random.random()),
            sleep=sleep,
            before_sleep=log_retry,
            reraise=True,
        )
        try:
            retrying(self._try_once, command, channels, fields, redeclare, renew)
        except NotTaken as exc:
            command.done.set_exception(
                TransportError(
                    f"RabbitMQ at {self._endpoint} did not take a {command.topic} message after "
                    f"{command.failures} attempts (last: {exc.reason})"
                )
            )
            return
        command.done.set_result(None)

    def _try_once(
        self,
        command: Publish,
        channels: list[Any],
        fields: dict[str, Any],
        redeclare: Callable[[], None],
        renew: Callable[[], Any],
    ) -> None:
        exchange, key = self._topology.route(command.topic)
        try:
            channels[-1].basic_publish(
                exchange, key, command.body, self._properties, mandatory=True
            )
        except pika.exceptions.UnroutableError:
            if command.topic == ANNOUNCE:  # hospitals that subscribe later say Hello
                self._events(
                    "amqp_announce_unroutable",
                    level=logging.WARNING,
                    **fields,
                    note="no hospital queue is bound yet",
                )
                return
            redeclare()
            reason = "unroutable"
        except pika.exceptions.NackError:
            reason = "nacked"
            channels.append(renew())
        else:
            self._events("amqp_published", level=logging.DEBUG, **fields)
            return
        command.failures += 1
        raise NotTaken(reason)

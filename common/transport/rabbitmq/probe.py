"""What a broker user may do, tried one operation at a time: the isolation a deployment relies on.

A ``Probe`` logs in with one participant's credentials and tries single AMQP operations, each on
a channel of its own, reporting the broker's answer as an ``Outcome`` instead of raising: allowed,
or refused with the reply code (403 access refused, 406 precondition failed, 404 not found) and
text. The isolation tests use it to show what a hospital cannot do with its own credentials;
an operator can point it at a live broker the same way.

Publishing waits for the broker's confirm, so a refusal (a forged ``user_id``, a message over
``max_message_size``, a full queue) is known when ``publish`` returns.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import pika
import pika.exceptions

from common.errors import ConfigError, TransportError
from common.transport.rabbitmq.params import (
    DEFAULT_CONNECT_TIMEOUT,
    connection_parameters,
    untrusted_certificate,
)
from common.transport.settings import (
    DEFAULT_QUEUE_TYPE,
    URL_SEPARATOR,
    QueueType,
    queue_arguments,
)


@dataclass(frozen=True)
class Outcome:
    """The broker's answer to one operation: allowed, or refused with a reply code and text."""

    allowed: bool
    code: int | None = None  # the AMQP reply code of a refusal; None for a nack
    text: str = ""

    def __str__(self) -> str:
        return "allowed" if self.allowed else f"refused {self.code}: {self.text}"


ALLOWED = Outcome(allowed=True)


class Probe:
    """One connection as one broker user; each method tries one operation on a new channel."""

    def __init__(
        self,
        url: str,
        *,
        ca_file: str | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        if URL_SEPARATOR in url:
            raise ConfigError("a probe logs in to one broker node: give one URL, not a list")
        params, self.endpoint = connection_parameters(
            url, heartbeat=30, connect_timeout=connect_timeout, ca_file=ca_file, name="hefl-probe"
        )
        self.user: str | None = getattr(params.credentials, "username", None)
        try:
            self._connection = pika.BlockingConnection(params)
        except ssl.SSLCertVerificationError as exc:
            raise untrusted_certificate(self.endpoint, exc) from exc
        except (pika.exceptions.AMQPError, OSError) as exc:
            raise TransportError(f"cannot log in to RabbitMQ at {self.endpoint}: {exc!r}") from exc

    def __enter__(self) -> Probe:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._connection.is_open:
            self._connection.close()

    def consume(self, queue: str) -> Outcome:
        def consume(channel: Any) -> None:
            tag = channel.basic_consume(queue, lambda *_: None, auto_ack=False)
            channel.basic_cancel(tag)

        return self._try(consume)

    def get(self, queue: str) -> Outcome:
        return self._try(lambda channel: channel.basic_get(queue, auto_ack=False))

    def purge(self, queue: str) -> Outcome:
        return self._try(lambda channel: channel.queue_purge(queue))

    def delete_queue(self, queue: str) -> Outcome:
        return self._try(lambda channel: channel.queue_delete(queue))

    def declare_queue(self, queue: str, *, queue_type: QueueType = DEFAULT_QUEUE_TYPE) -> Outcome:
        """Declare ``queue`` durable, of ``queue_type`` (as the transport declares its queues)."""
        arguments = queue_arguments(queue_type)
        return self._try(
            lambda channel: channel.queue_declare(queue, durable=True, arguments=arguments)
        )

    def bind(self, queue: str, exchange: str, routing_key: str = "") -> Outcome:
        return self._try(lambda channel: channel.queue_bind(queue, exchange, routing_key))

    def bind_exchange(self, destination: str, source: str, routing_key: str = "") -> Outcome:
        return self._try(lambda channel: channel.exchange_bind(destination, source, routing_key))

    def delete_exchange(self, exchange: str) -> Outcome:
        return self._try(lambda channel: channel.exchange_delete(exchange))

    def publish(
        self, exchange: str, routing_key: str, body: bytes, *, user_id: str | None = None
    ) -> Outcome:
        """Publish one persistent message and wait for the broker's confirm."""
        properties = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
        if user_id is not None:
            properties.user_id = user_id

        def publish(channel: Any) -> None:
            channel.confirm_delivery()
            channel.basic_publish(exchange, routing_key, body, properties)

        return self._try(publish)

    def _try(self, operation: Callable[[Any], object]) -> Outcome:
        channel = self._connection.channel()
        try:
            operation(channel)
        except pika.exceptions.ChannelClosedByBroker as exc:
            return Outcome(allowed=False, code=exc.reply_code, text=exc.reply_text)
        except pika.exceptions.NackError:
            return Outcome(allowed=False, text="nacked")
        if channel.is_open:
            channel.close()
        return ALLOWED

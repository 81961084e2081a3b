"""RabbitMQ transport (pika): durable queues, persistent messages, confirms, ack after the handler.

The only package of the project that imports pika. One module per concern, each read on its own:

- ``params``: broker URL and CA file to pika connection parameters; the endpoint without password.
- ``topology``: exchange and queue names of a prefix and identity; declaring them.
- ``commands``: what other threads hand the I/O thread, and the deliveries it hands back.
- ``publisher``: confirmed publishing, with retries of nacked and unroutable messages.
- ``session``: one live connection and its channels.
- ``io_thread``: the thread that owns the connection: commands, pumping, reconnecting.
- ``transport``: ``RabbitMQTransport``, the public face: publish, subscribe, serve, close.
- ``probe``: ``Probe``, single operations as one broker user, to check what it may do.
- ``events``: the package's structured log events.
"""

from __future__ import annotations

from common.transport.rabbitmq.params import DEFAULT_CONNECT_TIMEOUT, DEFAULT_HEARTBEAT
from common.transport.rabbitmq.probe import Outcome, Probe
from common.transport.rabbitmq.transport import DEFAULT_PUBLISH_ATTEMPTS, RabbitMQTransport
from common.transport.settings import (
    BROKER_URL_ENV,
    DEFAULT_BROKER_URL,
    DEFAULT_PREFIX,
    Backoff,
    broker_url,
)

__all__ = [
    "BROKER_URL_ENV",
    "DEFAULT_BROKER_URL",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_HEARTBEAT",
    "DEFAULT_PREFIX",
    "DEFAULT_PUBLISH_ATTEMPTS",
    "Backoff",
    "Outcome",
    "Probe",
    "RabbitMQTransport",
    "broker_url",
]

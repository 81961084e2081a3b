"""``RabbitMQTransport``: the Transport protocol over RabbitMQ, plus ``serve`` to consume.

``publish`` and ``subscribe`` may be called from any thread; they hand a command to the I/O
thread (``io_thread``) and wait for it, so ``publish`` returns once the broker confirmed the
message and ``subscribe`` once this identity's queue exists. ``serve`` runs handlers, ``on_idle``
and ``stop`` on the thread that called it, one at a time, so they need no locks, and a
KeyboardInterrupt lands in the handler and leaves its message unacked.

Acks: a handler that returns is acked. One that raises is logged with its traceback and acked too:
the project's handlers log and count bad input, so an exception is a bug that would fail again on
every redelivery (a poison-message loop). A handler that never returns (process killed, transport
closed, connection lost) leaves its message unacked and the broker redelivers it: at least once.

Senders: a delivery reaches the handlers only with a ``user_id`` (which the broker checked against
the publisher's connection), from one of the ``senders`` when they are given, and no larger than
``max_message_bytes``. Anything else is dropped before any handler decodes it: acked, logged as
``amqp_delivery_dropped`` and counted in ``dropped`` by reason. ``subscribe_with_sender`` handlers
get the sender's identity with each body: its broker user, without the namespace that this
transport's own user puts before its identity (none in a deployment, where users are named after
the participants; tests share one broker and prefix their users).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Final

from common.errors import ConfigError, TransportError
from common.transport.base import Handler, SenderHandler
from common.transport.rabbitmq.commands import (
    Ack,
    Delivery,
    Generation,
    Publish,
    Sink,
    Sync,
    Wanted,
)
from common.transport.rabbitmq.events import Events
from common.transport.rabbitmq.io_thread import IOThread
from common.transport.rabbitmq.params import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_HEARTBEAT,
    broker_nodes,
)
from common.transport.rabbitmq.publisher import Publisher
from common.transport.rabbitmq.session import Wiring
from common.transport.rabbitmq.topology import Topology, check_topic
from common.transport.settings import (
    DEFAULT_BACKOFF,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_PREFIX,
    DEFAULT_QUEUE_TYPE,
    Backoff,
    QueueType,
    broker_url,
)

DEFAULT_PUBLISH_ATTEMPTS: Final = 5
_STOP_POLL_SECONDS: Final = 0.1  # longest serve() waits for a delivery before asking stop()
# A serve() loop turn this long means the process was paused (SIGSTOP, a suspended VM, swap) or
# a handler was slow: on_idle then waits _RESUME_GRACE_SECONDS while the deliveries queued
# meanwhile come in, so a deadline is judged on them.
_STALL_SECONDS: Final = 5.0
_RESUME_GRACE_SECONDS: Final = 2.0


class RabbitMQTransport:
    """The Transport protocol over RabbitMQ; ``serve`` consumes until ``stop()`` is true."""

    def __init__(
        self,
        *,
        identity: str,
        url: str | Sequence[str] | None = None,
        prefix: str = DEFAULT_PREFIX,
        queue_type: QueueType = DEFAULT_QUEUE_TYPE,
        heartbeat: int = DEFAULT_HEARTBEAT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        backoff: Backoff = DEFAULT_BACKOFF,
        publish_attempts: int = DEFAULT_PUBLISH_ATTEMPTS,
        ca_file: str | None = None,
        senders: Mapping[str, str] | Iterable[str] | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        sleep: Callable[[float], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``url``: the broker's URL or, for a cluster, its nodes' URLs (a sequence, or one string
        separating them with commas); the transport connects to one node and moves to another
        when it loses it. ``queue_type``: of the queues this participant declares.

        ``senders``: the participants whose messages this one accepts, by identity; their
        broker users are named like this transport's own (when its user is ``<namespace><own
        identity>``, the user ``<namespace>hospital-1`` is ``hospital-1``; a deployment's
        namespace is empty). A Mapping names the users explicitly: broker user -> identity.
        None accepts every authenticated user, named by its user name without that namespace."""
        topology = Topology(identity=identity, prefix=prefix, queue_type=queue_type)
        if not isinstance(heartbeat, int) or heartbeat < 1:
            raise ConfigError(f"heartbeat must be a whole number of seconds >= 1, got {heartbeat}")
        if connect_timeout <= 0 or publish_attempts < 1 or max_message_bytes < 1:
            raise ConfigError(
                "connect_timeout, publish_attempts and max_message_bytes must be positive"
            )
        self.max_message_bytes = max_message_bytes
        self.identity = identity
        self.prefix = prefix
        self.exchange = topology.exchange
        self.submit_exchange = topology.submit_exchange
        self.announce_queue = topology.announce_queue
        self.submit_queue = topology.submit_queue
        nodes = broker_nodes(
            url or broker_url(),
            heartbeat=heartbeat,
            connect_timeout=connect_timeout,
            ca_file=ca_file,
            name=f"{prefix}:{identity}",
        )
        self.endpoints = tuple(node.endpoint for node in nodes)
        self.endpoint = ",".join(self.endpoints)  # every node, without passwords
        self._events = Events(identity)
        self._generation = Generation()
        self._lock = threading.Lock()  # guards the two fields below, read by the I/O thread
        self._handlers: dict[str, list[SenderHandler]] = {}
        self._sink: Sink | None = None
        self.user: str | None = getattr(nodes[0].params.credentials, "username", None)
        self._namespace = _namespace(self.user, identity)
        self.senders = _sender_map(senders, self._namespace)
        publisher = Publisher(
            topology,
            attempts=publish_attempts,
            backoff=backoff,
            endpoint=self.endpoint,
            events=self._events,
            user=self.user,
        )
        wiring = Wiring(
            topology=topology,
            endpoint=self.endpoint,
            publisher=publisher,
            wanted=self._wanted,
            generation=self._generation,
            events=self._events,
        )
        self._io = IOThread(nodes=nodes, wiring=wiring, backoff=backoff, sleep=sleep, clock=clock)
        self.handler_errors = 0
        self.dropped: Counter[str] = Counter()  # deliveries refused before any handler, by reason

    @property
    def reconnects(self) -> int:
        """Connections reopened after the first one, over the transport's life."""
        return self._io.reconnects

    @property
    def connected_to(self) -> str | None:
        """The endpoint of the broker node this transport is connected to now (None: none)."""
        return self._io.connected_to

    def __repr__(self) -> str:
        return f"RabbitMQTransport(identity={self.identity!r}, endpoint={self.endpoint!r})"

    def __enter__(self) -> RabbitMQTransport:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- the Transport protocol (any thread) -----------------------------------------------------

    def publish(self, topic: str, body: bytes) -> None:
        """Send one persistent message; return once the broker has confirmed it."""
        check_topic(topic)
        if len(body) > self.max_message_bytes:
            raise TransportError(
                f"a {topic} message of {len(body)} bytes exceeds the limit of "
                f"{self.max_message_bytes} bytes"
            )
        command = Publish(topic, bytes(body))
        self._io.submit(command)
        command.done.result()

    def subscribe(self, topic: str, handler: Handler) -> None:
        """Add a handler; on return this identity's queue exists and keeps messages for it."""
        self.subscribe_with_sender(topic, _without_sender(handler))

    def subscribe_with_sender(self, topic: str, handler: SenderHandler) -> None:
        """Like ``subscribe``; ``handler`` also gets each message's authenticated sender."""
        check_topic(topic)
        with self._lock:
            self._handlers.setdefault(topic, []).append(handler)
        command = Sync()
        self._io.submit(command)
        command.done.result()

    def serve(
        self,
        *,
        stop: Callable[[], bool],
        on_idle: Callable[[], None] | None = None,
        idle_interval: float = 1.0,
    ) -> None:
        """Deliver messages to the handlers until ``stop()``; ``on_idle`` runs between them,
        every ``idle_interval``, and not before the messages queued during a pause are in."""
        if idle_interval <= 0:
            raise ConfigError(f"idle_interval must be positive, got {idle_interval}")
        sink: Sink = queue.Queue()
        with self._lock:
            if self._sink is not None:
                raise TransportError("serve() is already running on this transport")
            self._sink = sink
        try:
            command = Sync()
            self._io.submit(command)
            command.done.result()
            next_idle = last_turn = time.monotonic()
            next_idle += idle_interval
            while not stop() and not self._io.closing:
                wait = _STOP_POLL_SECONDS
                if on_idle is not None:
                    wait = min(wait, max(0.0, next_idle - time.monotonic()))
                try:
                    item: Delivery | TransportError | None = sink.get(timeout=wait)
                except queue.Empty:
                    item = None
                if isinstance(item, TransportError):
                    raise item
                if item is not None:
                    self._handle(item)
                turn = time.monotonic()
                if turn - last_turn >= _STALL_SECONDS:
                    self._events("amqp_serve_late", turn_s=round(turn - last_turn, 1))
                    next_idle = max(next_idle, turn + _RESUME_GRACE_SECONDS)
                last_turn = turn
                if on_idle is not None and turn >= next_idle:
                    on_idle()
                    next_idle = time.monotonic() + idle_interval
        finally:
            with self._lock:
                self._sink = None
            self._io.submit(Sync(), start=False)  # stop consuming; unhandled deliveries go back

    def close(self) -> None:
        """Stop the I/O thread and close the connection; unacked messages return to their queue."""
        self._io.close()

    # -- the serving thread ----------------------------------------------------------------------

    def _handle(self, delivery: Delivery) -> None:
        fields: dict[str, Any] = {"topic": delivery.topic, "tag": delivery.tag}
        if delivery.generation != self._generation.current:
            self._events("amqp_delivery_stale", **fields, note="channel gone; broker redelivers")
            return
        fields["bytes"] = len(delivery.body)
        sender, refusal = self._sender(delivery)
        if sender is None:
            self.dropped[refusal] += 1
            self._events(
                "amqp_delivery_dropped",
                level=logging.WARNING,
                **fields,
                reason=refusal,
                user_id=delivery.user_id,
                action="acked",
            )
            self._io.submit(Ack(delivery.tag, delivery.generation), start=False)
            return
        self._events(
            "amqp_delivery",
            level=logging.DEBUG,
            **fields,
            sender=sender,
            redelivered=delivery.redelivered,
        )
        with self._lock:
            handlers = list(self._handlers.get(delivery.topic, ()))
        for handler in handlers:
            try:
                handler(delivery.body, sender)
            except Exception as exc:
                self.handler_errors += 1
                self._events.error_with_traceback(
                    "amqp_handler_failed", **fields, error=type(exc).__name__, action="acked"
                )
        self._io.submit(Ack(delivery.tag, delivery.generation), start=False)

    def _sender(self, delivery: Delivery) -> tuple[str | None, str]:
        """The delivery's sender identity, or None and why it must be dropped."""
        if len(delivery.body) > self.max_message_bytes:
            return None, "too_large"
        if not delivery.user_id:
            return None, "unauthenticated"
        if self.senders is None:
            return delivery.user_id.removeprefix(self._namespace) or delivery.user_id, ""
        sender = self.senders.get(delivery.user_id)
        return (sender, "") if sender is not None else (None, "unknown_sender")

    # -- read by the I/O thread ------------------------------------------------------------------

    def _wanted(self) -> Wanted:
        with self._lock:
            return Wanted(frozenset(self._handlers), self._sink)


def _without_sender(handler: Handler) -> SenderHandler:
    def call(body: bytes, _sender: str) -> None:
        handler(body)

    return call


def _namespace(user: str | None, identity: str) -> str:
    """What this transport's user name puts before its identity ("" when it is not so named)."""
    return user[: -len(identity)] if user and user.endswith(identity) else ""


def _sender_map(
    senders: Mapping[str, str] | Iterable[str] | None, namespace: str
) -> dict[str, str] | None:
    """Broker user -> identity of the accepted senders."""
    if senders is None:
        return None
    if isinstance(senders, str):
        raise ConfigError("senders is a collection of participant names, not one string")
    if isinstance(senders, Mapping):
        return dict(senders)
    return {namespace + name: name for name in senders}

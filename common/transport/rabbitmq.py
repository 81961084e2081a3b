"""RabbitMQ transport (pika): durable queues, persistent messages, confirms, ack after the handler.

Topology, declared idempotently on every (re)connect:

- ``<prefix>.announce``: durable fanout exchange; ANNOUNCE is published there.
- ``<prefix>.announce.<identity>``: a subscriber's own durable queue bound to that exchange, created
  when it subscribes to ANNOUNCE, so a hospital keeps the announcements sent while it was away.
- ``<prefix>.submit``: the coordinator's durable queue; SUBMIT goes there through the default
  exchange, ``mandatory`` so that a missing queue is noticed instead of dropping the message.

Threading: a pika connection is not thread safe, so one background I/O thread owns the only
connection and pumps it all the time: heartbeats flow whatever the handlers do, while serving or
not. Other threads hand it commands (publish, ack, subscription changes) through a queue and wake
it with ``add_callback_threadsafe``; ``publish`` waits for the broker's confirm. ``serve`` runs
handlers, ``on_idle`` and ``stop`` on the thread that called it, one at a time, so they need no
locks, and a KeyboardInterrupt lands in the handler and leaves its message unacked.

Reconnects: a lost connection is reopened with capped exponential backoff plus jitter (``Backoff``),
topology redeclared and consuming resumed; a broker away for ``give_up_after`` seconds, or one that
refuses the credentials or the topology, ends in a TransportError naming the URL without password.
pika's own (tracebacked, repetitive) log lines are silenced unless the application set a level on
the ``pika`` logger; the same errors appear in this module's events.

Acks: a handler that returns is acked. One that raises is logged with its traceback and acked too:
the project's handlers log and count bad input, so an exception is a bug that would fail again on
every redelivery (a poison-message loop). A handler that never returns (process killed, transport
closed, connection lost) leaves its message unacked and the broker redelivers it: at least once.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import re
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType
from typing import Any, Final
from urllib.parse import quote

import pika
import pika.exceptions

from common.errors import ConfigError, TransportError
from common.logs import format_event, log_event
from common.transport.base import ANNOUNCE, TOPICS, Handler
from common.transport.settings import (
    BROKER_URL_ENV,
    DEFAULT_BACKOFF,
    DEFAULT_BROKER_URL,
    DEFAULT_PREFIX,
    Backoff,
    broker_url,
)

__all__ = [
    "BROKER_URL_ENV",
    "DEFAULT_BROKER_URL",
    "DEFAULT_PREFIX",
    "Backoff",
    "RabbitMQTransport",
    "broker_url",
]

_LOG = logging.getLogger(__name__)
_PIKA_LOG = logging.getLogger("pika")
if _PIKA_LOG.level == logging.NOTSET:  # unless the application chose: every failure pika logs
    _PIKA_LOG.setLevel(logging.CRITICAL)  # (with tracebacks) reaches our events as an error field

DEFAULT_HEARTBEAT: Final = 30
DEFAULT_CONNECT_TIMEOUT: Final = 10.0
DEFAULT_PUBLISH_ATTEMPTS: Final = 5
_PUMP_SECONDS: Final = 0.1  # longest the I/O thread stays in pika before reading its commands
_BLOCKED_SECONDS: Final = 60.0  # a broker blocking publishers (resource alarm) this long is "down"
_REFUSALS_BEFORE_GIVING_UP: Final = 5
_FATAL_REPLY_CODES: Final = (403, 406)  # access refused, precondition failed: retrying cannot help
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class _ChannelLost(Exception):
    """A channel closed or a consumer was cancelled under us: treated like a lost connection."""


_DISCONNECTS: Final = (pika.exceptions.AMQPError, OSError, _ChannelLost)
_REFUSED: Final = (
    pika.exceptions.ProbableAuthenticationError,
    pika.exceptions.ProbableAccessDeniedError,
    pika.exceptions.AuthenticationError,
    pika.exceptions.IncompatibleProtocolError,
)


@dataclass
class _Publish:
    topic: str
    body: bytes
    done: Future[None] = field(default_factory=Future)
    failures: int = 0  # nacks and unroutable returns so far


@dataclass(frozen=True)
class _Ack:
    tag: int
    generation: int


@dataclass(frozen=True)
class _Sync:
    """Bring the connection in line with the wanted subscriptions and consuming state."""

    done: Future[None] = field(default_factory=Future)


_Command = _Publish | _Ack | _Sync


@dataclass(frozen=True)
class _Delivery:
    topic: str
    tag: int
    body: bytes
    redelivered: bool
    generation: int


@dataclass
class _Session:
    """One live connection and its channels; touched by the I/O thread only."""

    connection: Any
    publisher: Any
    consumer: Any = None
    sink: queue.Queue[_Delivery | TransportError] | None = None
    generation: int = 0
    consuming: set[str] = field(default_factory=set)
    declared: set[str] = field(default_factory=set)
    cancelled: bool = False


class RabbitMQTransport:
    """The Transport protocol over RabbitMQ; ``serve`` consumes until ``stop()`` is true."""

    def __init__(
        self,
        *,
        identity: str,
        url: str | None = None,
        prefix: str = DEFAULT_PREFIX,
        heartbeat: int = DEFAULT_HEARTBEAT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        backoff: Backoff = DEFAULT_BACKOFF,
        publish_attempts: int = DEFAULT_PUBLISH_ATTEMPTS,
        ca_file: str | None = None,
        sleep: Callable[[float], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        for name, value in (("identity", identity), ("prefix", prefix)):
            if not _NAME.fullmatch(value):
                raise ConfigError(f"{name} {value!r} must match {_NAME.pattern}")
        if not isinstance(heartbeat, int) or heartbeat < 1:
            raise ConfigError(f"heartbeat must be a whole number of seconds >= 1, got {heartbeat}")
        if connect_timeout <= 0 or publish_attempts < 1:
            raise ConfigError("connect_timeout and publish_attempts must be positive")
        self.identity = identity
        self.prefix = prefix
        self.exchange = f"{prefix}.announce"
        self.announce_queue = f"{prefix}.announce.{identity}"
        self.submit_queue = f"{prefix}.submit"
        self._params, self.endpoint = _parameters(
            url or broker_url(), heartbeat, connect_timeout, ca_file, f"{prefix}:{identity}"
        )
        self._backoff = backoff
        self._publish_attempts = publish_attempts
        self._closing = threading.Event()
        self._sleep = sleep if sleep is not None else self._closing.wait
        self._clock = clock
        self._properties = pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent,
            content_type="application/octet-stream",
            app_id=identity,
        )
        self._lock = threading.Lock()  # guards the fields below, shared with the I/O thread
        self._commands: deque[_Command] = deque()
        self._handlers: dict[str, list[Handler]] = {}
        self._sink: queue.Queue[_Delivery | TransportError] | None = None
        self._io: threading.Thread | None = None
        self._connection: Any = None  # the live connection, for add_callback_threadsafe only
        self._generation = 0  # bumped whenever the consumer channel changes: older tags are void
        self._connected_before = False
        self.reconnects = 0
        self.handler_errors = 0

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
        _check_topic(topic)
        command = _Publish(topic, bytes(body))
        self._submit(command)
        command.done.result()

    def subscribe(self, topic: str, handler: Handler) -> None:
        """Add a handler; on return this identity's queue exists and keeps messages for it."""
        _check_topic(topic)
        with self._lock:
            self._handlers.setdefault(topic, []).append(handler)
        command = _Sync()
        self._submit(command)
        command.done.result()

    def serve(
        self,
        *,
        stop: Callable[[], bool],
        on_idle: Callable[[], None] | None = None,
        idle_interval: float = 1.0,
    ) -> None:
        """Deliver messages to the handlers until ``stop()``; ``on_idle`` runs between them."""
        if idle_interval <= 0:
            raise ConfigError(f"idle_interval must be positive, got {idle_interval}")
        sink: queue.Queue[_Delivery | TransportError] = queue.Queue()
        with self._lock:
            if self._sink is not None:
                raise TransportError("serve() is already running on this transport")
            self._sink = sink
        try:
            command = _Sync()
            self._submit(command)
            command.done.result()
            next_idle = time.monotonic() + idle_interval
            while not stop() and not self._closing.is_set():
                wait = _PUMP_SECONDS
                if on_idle is not None:
                    wait = min(wait, max(0.0, next_idle - time.monotonic()))
                try:
                    item: _Delivery | TransportError | None = sink.get(timeout=wait)
                except queue.Empty:
                    item = None
                if isinstance(item, TransportError):
                    raise item
                if item is not None:
                    self._handle(item)
                if on_idle is not None and time.monotonic() >= next_idle:
                    on_idle()
                    next_idle = time.monotonic() + idle_interval
        finally:
            with self._lock:
                self._sink = None
            self._submit(_Sync(), start=False)  # stop consuming; unhandled deliveries go back

    def close(self) -> None:
        """Stop the I/O thread and close the connection; unacked messages return to their queue."""
        with self._lock:
            self._closing.set()
            thread, connection = self._io, self._connection
        _wake(connection)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self._params.stack_timeout + 5)

    # -- the serving thread ----------------------------------------------------------------------

    def _handle(self, delivery: _Delivery) -> None:
        fields: dict[str, Any] = {"topic": delivery.topic, "tag": delivery.tag}
        if delivery.generation != self._generation:
            self._log("amqp_delivery_stale", **fields, note="channel gone; broker redelivers")
            return
        self._log(
            "amqp_delivery",
            level=logging.DEBUG,
            **fields,
            bytes=len(delivery.body),
            redelivered=delivery.redelivered,
        )
        with self._lock:
            handlers = list(self._handlers.get(delivery.topic, ()))
        for handler in handlers:
            try:
                handler(delivery.body)
            except Exception as exc:
                self.handler_errors += 1
                event = format_event(
                    "amqp_handler_failed",
                    identity=self.identity,
                    **fields,
                    error=type(exc).__name__,
                    action="acked",
                )
                _LOG.error(event, exc_info=True)
        self._submit(_Ack(delivery.tag, delivery.generation), start=False)

    def _submit(self, command: _Command, *, start: bool = True) -> None:
        with self._lock:
            if self._closing.is_set():
                if start:
                    raise TransportError(f"transport to {self.endpoint} is closed")
                return
            if self._io is None:
                if not start:  # nothing to ack or stop on a connection that is gone
                    return
                self._io = threading.Thread(
                    target=self._run, name=f"amqp-io-{self.identity}", daemon=True
                )
                self._io.start()
            self._commands.append(command)
            connection = self._connection
        _wake(connection)

    # -- the I/O thread --------------------------------------------------------------------------

    def _run(self) -> None:
        error: TransportError | None = None
        down_since: float | None = None
        try:
            while not self._closing.is_set():
                session = self._connect(down_since)
                if session is None:
                    break
                try:
                    self._pump(session)
                except _DISCONNECTS as exc:
                    down_since = self._clock()
                    self._log("amqp_connection_lost", level=logging.WARNING, error=_describe(exc))
                finally:
                    with self._lock:
                        self._connection = None
                        self._generation += 1
                    with contextlib.suppress(Exception):
                        session.connection.close()
        except TransportError as exc:
            error = exc
            self._log("amqp_gave_up", level=logging.ERROR, error=str(exc))
        except Exception as exc:  # a bug here must not leave publishers waiting forever
            _LOG.exception("amqp_io_crashed identity=%s", self.identity)
            error = TransportError(f"RabbitMQ I/O thread failed: {exc!r}")
        finally:
            with self._lock:
                self._io = None
                pending = list(self._commands)
                self._commands.clear()
                if error is not None and self._sink is not None:
                    self._sink.put(error)
            for command in pending:
                _fail(command, error or TransportError(f"transport to {self.endpoint} is closed"))
            self._log("amqp_closed", level=logging.DEBUG)

    def _connect(self, down_since: float | None) -> _Session | None:
        started = self._clock() if down_since is None else down_since
        attempt = 0
        refused = 0
        while not self._closing.is_set():
            attempt += 1
            try:
                session = self._open()
            except _REFUSED as exc:
                # A broker that is shutting down or booting also drops clients mid-handshake,
                # which pika reports as these; only a refusal that persists is final.
                refused += 1
                if refused >= _REFUSALS_BEFORE_GIVING_UP:
                    raise TransportError(
                        f"RabbitMQ at {self.endpoint} refused this client {refused} times: "
                        f"{_describe(exc)} (check the user, password, vhost and permissions)"
                    ) from exc
                self._log(
                    "amqp_refused", level=logging.WARNING, attempt=attempt, error=_describe(exc)
                )
                self._sleep(self._backoff.delay(attempt, random.random()))
                continue
            except _DISCONNECTS as exc:
                elapsed = self._clock() - started
                if elapsed >= self._backoff.give_up_after:
                    raise TransportError(
                        f"RabbitMQ at {self.endpoint} unreachable for {elapsed:.1f} s "
                        f"({attempt} attempts): {_describe(exc)}"
                    ) from exc
                delay = self._backoff.delay(attempt, random.random())
                delay = min(delay, self._backoff.give_up_after - elapsed)
                self._log(
                    "amqp_reconnecting",
                    level=logging.WARNING,
                    endpoint=self.endpoint,
                    attempt=attempt,
                    delay=delay,
                    error=_describe(exc),
                )
                self._sleep(delay)
                continue
            if self._connected_before:
                self.reconnects += 1
            self._connected_before = True
            self._log(
                "amqp_connected",
                endpoint=self.endpoint,
                attempt=attempt,
                heartbeat=self._params.heartbeat,
            )
            return session
        return None

    def _open(self) -> _Session:
        connection = pika.BlockingConnection(self._params)
        try:
            publisher = connection.channel()
            publisher.confirm_delivery()
            session = _Session(connection, publisher)
            self._declare(session, base=True)
            self._sync(session)
        except BaseException:
            with contextlib.suppress(Exception):
                connection.close()
            raise
        with self._lock:
            self._connection = connection
        return session

    def _pump(self, session: _Session) -> None:
        while True:
            while command := self._next_command():
                try:
                    self._execute(session, command)
                except _DISCONNECTS:
                    if not isinstance(command, _Ack):  # retried on the next connection
                        with self._lock:
                            self._commands.appendleft(command)
                    raise
                except TransportError as exc:
                    _fail(command, exc)
                    raise
            if self._closing.is_set():  # acks and publishes asked for before close() went out
                return
            session.connection.process_data_events(time_limit=_PUMP_SECONDS)
            if session.cancelled or not session.publisher.is_open:
                raise _ChannelLost("a channel was closed or a consumer cancelled by the broker")

    def _next_command(self) -> _Command | None:
        with self._lock:
            return self._commands.popleft() if self._commands else None

    def _execute(self, session: _Session, command: _Command) -> None:
        if isinstance(command, _Ack):
            if command.generation != session.generation or not session.consumer:
                self._log(
                    "amqp_ack_dropped", tag=command.tag, note="channel gone; broker redelivers"
                )
                return
            session.consumer.basic_ack(command.tag)
            self._log("amqp_ack", level=logging.DEBUG, tag=command.tag)
        elif isinstance(command, _Sync):
            self._sync(session)
            command.done.set_result(None)
        else:
            self._publish(session, command)

    def _declare(self, session: _Session, *, base: bool = False) -> None:
        channel = session.publisher
        try:
            if base:
                channel.exchange_declare(
                    self.exchange,
                    exchange_type=pika.exchange_type.ExchangeType.fanout,
                    durable=True,
                )
                channel.queue_declare(self.submit_queue, durable=True)
                self._log("amqp_declared", exchange=self.exchange, queue=self.submit_queue)
            with self._lock:
                wanted = ANNOUNCE in self._handlers
            if wanted and ANNOUNCE not in session.declared:
                channel.queue_declare(self.announce_queue, durable=True)
                channel.queue_bind(self.announce_queue, self.exchange)
                session.declared.add(ANNOUNCE)
                self._log("amqp_declared", exchange=self.exchange, queue=self.announce_queue)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code in _FATAL_REPLY_CODES:
                raise TransportError(
                    f"RabbitMQ at {self.endpoint} rejected the topology of prefix "
                    f"{self.prefix!r}: {exc.reply_text}"
                ) from exc
            raise

    def _sync(self, session: _Session) -> None:
        self._declare(session)
        with self._lock:
            topics, sink = set(self._handlers), self._sink
        if session.consumer is not None and session.sink is not sink:
            session.consumer.close()
            session.consumer, session.sink = None, None
            session.consuming.clear()
            self._log("amqp_consuming_stopped")
        if sink is None:
            return
        if session.consumer is None:
            session.consumer = session.connection.channel()
            session.consumer.basic_qos(prefetch_count=1)
            session.consumer.add_on_cancel_callback(partial(_on_cancel, session))
            session.sink = sink
            with self._lock:
                self._generation += 1
                session.generation = self._generation
        for topic in sorted(topics - session.consuming):
            name = self.announce_queue if topic == ANNOUNCE else self.submit_queue
            callback = partial(_on_message, sink, topic, session.generation)
            session.consumer.basic_consume(name, callback, auto_ack=False)
            session.consuming.add(topic)
            self._log("amqp_consuming", topic=topic, queue=name, prefetch=1)

    def _publish(self, session: _Session, command: _Publish) -> None:
        fields: dict[str, Any] = {"topic": command.topic, "bytes": len(command.body)}
        exchange, key = (
            (self.exchange, "") if command.topic == ANNOUNCE else ("", self.submit_queue)
        )
        while True:
            try:
                session.publisher.basic_publish(
                    exchange, key, command.body, self._properties, mandatory=True
                )
                self._log("amqp_published", level=logging.DEBUG, **fields)
                break
            except pika.exceptions.UnroutableError:
                if command.topic == ANNOUNCE:  # hospitals that subscribe later say Hello
                    self._log(
                        "amqp_announce_unroutable",
                        level=logging.WARNING,
                        **fields,
                        note="no hospital queue is bound yet",
                    )
                    break
                reason = "unroutable"
                self._declare(session, base=True)
            except pika.exceptions.NackError:
                reason = "nacked"
            command.failures += 1
            if command.failures >= self._publish_attempts:
                error = TransportError(
                    f"RabbitMQ at {self.endpoint} did not take a {command.topic} message after "
                    f"{command.failures} attempts (last: {reason})"
                )
                command.done.set_exception(error)
                return
            self._log(
                "amqp_publish_retry",
                level=logging.WARNING,
                **fields,
                reason=reason,
                attempt=command.failures,
            )
            session.connection.sleep(self._backoff.delay(command.failures, random.random()))
        command.done.set_result(None)

    def _log(self, event: str, *, level: int = logging.INFO, **fields: Any) -> None:
        log_event(_LOG, event, level=level, identity=self.identity, **fields)


def _on_message(
    sink: queue.Queue[_Delivery | TransportError],
    topic: str,
    generation: int,
    _channel: Any,
    method: Any,
    _properties: Any,
    body: bytes,
) -> None:
    sink.put(_Delivery(topic, method.delivery_tag, body, bool(method.redelivered), generation))


def _on_cancel(session: _Session, _frame: Any) -> None:
    session.cancelled = True  # the queue was deleted: reconnecting redeclares it


def _parameters(
    url: str, heartbeat: int, connect_timeout: float, ca_file: str | None, name: str
) -> tuple[Any, str]:
    """pika connection parameters and the URL without its password (for logs and errors)."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme not in ("amqp", "amqps"):
        raise ConfigError(f"broker URL must start with amqp:// or amqps://, not {scheme!r}")
    try:
        params = pika.URLParameters(url)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid broker URL: {exc}") from exc
    if scheme == "amqps":
        try:
            context = ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the broker CA file {ca_file}: {exc}") from exc
        params.ssl_options = pika.SSLOptions(context, server_hostname=params.host)
    elif ca_file is not None:
        raise ConfigError("a broker CA file needs an amqps:// URL")
    params.heartbeat = heartbeat
    params.socket_timeout = connect_timeout
    params.stack_timeout = connect_timeout
    params.blocked_connection_timeout = _BLOCKED_SECONDS
    params.connection_attempts = 1  # retries are ours, with backoff and logs
    params.client_properties = {"connection_name": name}
    user = params.credentials.username
    host = f"[{params.host}]" if ":" in params.host else params.host
    endpoint = f"{scheme}://{user}@{host}:{params.port}/{quote(params.virtual_host, safe='')}"
    return params, endpoint


def _check_topic(topic: str) -> None:
    if topic not in TOPICS:
        raise TransportError(f"unknown topic {topic!r}")


def _describe(exc: BaseException) -> str:
    text, kind = str(exc), type(exc).__name__
    return (text if text.startswith(kind) else f"{kind}: {text or repr(exc)}")[:300]


def _fail(command: _Command, error: TransportError) -> None:
    if not isinstance(command, _Ack) and not command.done.done():
        command.done.set_exception(error)


def _noop() -> None:
    pass


def _wake(connection: Any) -> None:
    """Make the I/O thread leave process_data_events now (the only thread-safe pika call)."""
    if connection is not None:
        with contextlib.suppress(Exception):
            connection.add_callback_threadsafe(_noop)

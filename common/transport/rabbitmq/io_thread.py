"""The I/O thread: the one owner of a transport's connection, from first connect to close.

A pika connection is not thread safe, so one background thread owns it and pumps it all the time:
heartbeats flow whatever the handlers do, while serving or not (pika's
``basic_consumer_threaded`` example, with ``add_callback_threadsafe`` as the only call other
threads make). They queue commands here and wake the thread, which runs them between pumps.

A lost connection is reopened with capped exponential backoff plus jitter (``Backoff``), the
topology declared again and consuming resumed (pika's ``asynchronous_reconnecting_consumer``).
With several broker nodes (a cluster's URLs) each attempt walks the list once, from the node
after the last one used, so a client that loses its node moves on to the next at once; the
first connection starts at a random node, so clients spread over the cluster. Only a whole
walk that failed waits out a backoff delay.
A broker away for ``give_up_after`` seconds, or one that keeps refusing the credentials, ends the
thread with a TransportError naming the URL without password; it fails every waiting command and
reaches ``serve`` through its sink. The next command starts a new thread and a new attempt window.
A broker certificate that does not verify ends it at once: it will not verify on a retry either.
A hospital whose broker lacks the coordinator's exchanges waits for them without giving up,
checking every ``TOPOLOGY_POLL_SECONDS``: the broker is up, the coordinator just not started yet.
"""

from __future__ import annotations

import contextlib
import logging
import random
import ssl
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final

from common.errors import TransportError
from common.transport.rabbitmq.commands import Ack, Command, fail
from common.transport.rabbitmq.events import LOG
from common.transport.rabbitmq.params import Node, untrusted_certificate
from common.transport.rabbitmq.session import DISCONNECTS, REFUSED, Session, Wiring
from common.transport.rabbitmq.topology import SharedTopologyMissing
from common.transport.settings import Backoff

PUMP_SECONDS: Final = 0.1  # longest the I/O thread stays in pika before reading its commands
TOPOLOGY_POLL_SECONDS: Final = 1.0  # between checks for the exchanges the coordinator declares
_REFUSALS_BEFORE_GIVING_UP: Final = 5


class IOThread:
    """Runs commands on the connection it owns, starting on the first one and reconnecting."""

    def __init__(
        self,
        *,
        nodes: Sequence[Node],
        wiring: Wiring,
        backoff: Backoff,
        sleep: Callable[[float], object] | None,
        clock: Callable[[], float],
    ) -> None:
        if not nodes:
            raise ValueError("an I/O thread needs at least one broker node")
        self._nodes = tuple(nodes)
        self._next = random.randrange(len(self._nodes))  # the node the next walk starts at
        self._wiring = wiring
        self._backoff = backoff
        self._clock = clock
        self._closing = threading.Event()
        self._sleep = sleep if sleep is not None else self._closing.wait
        self._lock = threading.Lock()  # guards the fields below, shared with the other threads
        self._commands: deque[Command] = deque()
        self._thread: threading.Thread | None = None
        self._connection: Any = None  # the live connection, for add_callback_threadsafe only
        self._connected_to: str | None = None  # the endpoint of the live connection
        self._connected_before = False
        self.reconnects = 0

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    @property
    def connected_to(self) -> str | None:
        """The endpoint (URL without password) of the node connected to now, if any."""
        with self._lock:
            return self._connected_to

    def submit(self, command: Command, *, start: bool = True) -> None:
        """Queue ``command`` and wake the thread, starting it if ``start`` and none runs."""
        with self._lock:
            if self._closing.is_set():
                if start:
                    raise TransportError(f"transport to {self._wiring.endpoint} is closed")
                return
            if self._thread is None:
                if not start:  # nothing to ack or stop on a connection that is gone
                    return
                self._thread = threading.Thread(
                    target=self._run, name=f"amqp-io-{self._wiring.events.identity}", daemon=True
                )
                self._thread.start()
            self._commands.append(command)
            connection = self._connection
        _wake(connection)

    def close(self) -> None:
        """Stop the thread after the commands already queued and close the connection."""
        with self._lock:
            self._closing.set()
            thread, connection = self._thread, self._connection
        _wake(connection)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self._nodes[0].params.stack_timeout + 5)

    def _run(self) -> None:
        events, endpoint = self._wiring.events, self._wiring.endpoint
        error: TransportError | None = None
        down_since: float | None = None
        try:
            while not self._closing.is_set():
                session = self._connect(down_since)
                if session is None:
                    break
                try:
                    self._pump(session)
                except DISCONNECTS as exc:
                    down_since = self._clock()
                    events("amqp_connection_lost", level=logging.WARNING, error=_describe(exc))
                finally:
                    with self._lock:
                        self._connection, self._connected_to = None, None
                    self._wiring.generation.advance()
                    session.close()
        except TransportError as exc:
            error = exc
            events("amqp_gave_up", level=logging.ERROR, error=str(exc))
        except Exception as exc:  # a bug here must not leave publishers waiting forever
            LOG.exception("amqp_io_crashed identity=%s", events.identity)
            error = TransportError(f"RabbitMQ I/O thread failed: {exc!r}")
        finally:
            with self._lock:
                self._thread = None
                pending = list(self._commands)
                self._commands.clear()
            if error is not None:
                sink = self._wiring.wanted().sink
                if sink is not None:  # serve() raises it
                    sink.put(error)
            for command in pending:
                fail(command, error or TransportError(f"transport to {endpoint} is closed"))
            events("amqp_closed", level=logging.DEBUG)

    def _connect(self, down_since: float | None) -> Session | None:
        # A hand-written loop rather than tenacity: two ways to give up (refusals counted, and
        # time since the connection went down), each with its own error, a last delay cut to
        # the time left, and close() ending it; as tenacity callbacks that would read worse.
        events, endpoint = self._wiring.events, self._wiring.endpoint
        started = self._clock() if down_since is None else down_since
        attempt = 0
        refused = 0
        waits = 0
        while not self._closing.is_set():
            attempt += 1
            try:
                session = self._open()
            except ssl.SSLCertVerificationError as exc:
                raise untrusted_certificate(endpoint, exc) from exc
            except SharedTopologyMissing as exc:
                # The broker answers; the coordinator has not declared the exchanges yet. A
                # hospital may wait for it as long as it takes, checking at a steady pace.
                started, attempt = self._clock(), 0
                events(
                    "amqp_waiting_for_topology",
                    level=logging.WARNING if waits == 0 else logging.DEBUG,
                    waits=waits,
                    error=_describe(exc),
                )
                waits += 1
                self._sleep(TOPOLOGY_POLL_SECONDS)
                continue
            except REFUSED as exc:
                # A broker that is shutting down or booting also drops clients mid-handshake,
                # which pika reports as these; only a refusal that persists is final.
                refused += 1
                if refused >= _REFUSALS_BEFORE_GIVING_UP:
                    raise TransportError(
                        f"RabbitMQ at {endpoint} refused this client {refused} times: "
                        f"{_describe(exc)} (check the user, password, vhost and permissions)"
                    ) from exc
                events("amqp_refused", level=logging.WARNING, attempt=attempt, error=_describe(exc))
                self._sleep(self._backoff.delay(attempt, random.random()))
                continue
            except DISCONNECTS as exc:
                elapsed = self._clock() - started
                if elapsed >= self._backoff.give_up_after:
                    raise TransportError(
                        f"RabbitMQ at {endpoint} unreachable for {elapsed:.1f} s "
                        f"({attempt} attempts): {_describe(exc)}"
                    ) from exc
                delay = self._backoff.delay(attempt, random.random())
                delay = min(delay, self._backoff.give_up_after - elapsed)
                events(
                    "amqp_reconnecting",
                    level=logging.WARNING,
                    endpoint=endpoint,
                    attempt=attempt,
                    delay=delay,
                    error=_describe(exc),
                )
                self._sleep(delay)
                continue
            if self._connected_before:
                self.reconnects += 1
            self._connected_before = True
            events(
                "amqp_connected",
                endpoint=self._connected_to,
                attempt=attempt,
                heartbeat=self._nodes[0].params.heartbeat,
            )
            return session
        return None

    def _open(self) -> Session:
        """Connect to the first node that takes this client, walking the list once from
        ``_next``; the next walk starts after it. A certificate that does not verify, a refused
        topology or a missing one end the walk: every node of a cluster answers the same.

        When every node failed, the error raised is a refusal only if every node refused (bad
        credentials), else the last failure to connect (nodes down or booting)."""
        failures: list[BaseException] = []
        count = len(self._nodes)
        for step in range(count):
            index = (self._next + step) % count
            node = self._nodes[index]
            if step and self._closing.is_set():
                break
            try:
                session = Session.open(node.params, self._wiring)
            except (*REFUSED, *DISCONNECTS) as exc:
                if isinstance(exc, (SharedTopologyMissing, ssl.SSLCertVerificationError)):
                    raise
                failures.append(exc)
                if count > 1:
                    self._wiring.events(
                        "amqp_node_failed",
                        level=logging.WARNING,
                        endpoint=node.endpoint,
                        error=_describe(exc),
                    )
                continue
            self._next = (index + 1) % count
            with self._lock:
                self._connection, self._connected_to = session.connection, node.endpoint
            return session
        not_refused = [exc for exc in failures if not isinstance(exc, REFUSED)]
        raise (not_refused or failures)[-1]

    def _pump(self, session: Session) -> None:
        while True:
            while command := self._next_command():
                try:
                    session.execute(command)
                except DISCONNECTS:
                    if not isinstance(command, Ack):  # retried on the next connection
                        with self._lock:
                            self._commands.appendleft(command)
                    raise
                except TransportError as exc:
                    fail(command, exc)
                    raise
            if self._closing.is_set():  # acks and publishes asked for before close() went out
                return
            session.pump(PUMP_SECONDS)

    def _next_command(self) -> Command | None:
        with self._lock:
            return self._commands.popleft() if self._commands else None


def _describe(exc: BaseException) -> str:
    text, kind = str(exc), type(exc).__name__
    return (text if text.startswith(kind) else f"{kind}: {text or repr(exc)}")[:300]


def _noop() -> None:
    pass


def _wake(connection: Any) -> None:
    """Make the I/O thread leave process_data_events now (the only thread-safe pika call)."""
    if connection is not None:
        with contextlib.suppress(Exception):
            connection.add_callback_threadsafe(_noop)

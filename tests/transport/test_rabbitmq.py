"""The RabbitMQ transport against a real local broker (see testkit/broker.py): no mocks, no skips.

Each test gets its own virtual host and prefix, deleted afterwards (with every queue and exchange
in it), so tests never see each other's queues or messages.
"""

from __future__ import annotations

import itertools
import logging
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import common.transport
import common.transport.rabbitmq
import common.transport.rabbitmq.transport as rabbitmq_transport
from common.errors import ConfigError, TransportError
from common.transport import ANNOUNCE, SUBMIT, Transport
from common.transport.names import Names
from common.transport.rabbitmq import (
    BROKER_URL_ENV,
    DEFAULT_BROKER_URL,
    Backoff,
    RabbitMQTransport,
    broker_url,
)
from testkit import broker

FAST = Backoff(initial=0.1, maximum=1.0, give_up_after=60.0)
WAIT = 20.0  # seconds any single expectation may take before the test fails
Make = Callable[..., RabbitMQTransport]


@pytest.fixture(scope="module", autouse=True)
def running_broker() -> None:
    broker.ensure_running()


@pytest.fixture
def vhost() -> Iterator[broker.Vhost]:
    with broker.temporary_vhost() as made:
        yield made


@pytest.fixture
def prefix() -> str:
    return f"hefl-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make(vhost: broker.Vhost, prefix: str) -> Iterator[Make]:
    """Build transports on the test's virtual host and prefix; all are closed at teardown."""
    made: list[RabbitMQTransport] = []

    def build(identity: str, **options: Any) -> RabbitMQTransport:
        options = {"url": vhost.url, "prefix": prefix, "backoff": FAST, **options}
        transport = RabbitMQTransport(identity=identity, **options)
        made.append(transport)
        return transport

    yield build
    for transport in made:
        transport.close()


def serve_until(transport: RabbitMQTransport, done: Callable[[], bool], **options: Any) -> None:
    """Serve on this thread until ``done()``; fail if that takes longer than WAIT."""
    deadline = time.monotonic() + WAIT
    transport.serve(stop=lambda: done() or time.monotonic() > deadline, **options)
    assert done(), "expected deliveries did not arrive in time"


class Server:
    """``serve`` on a background thread, stopped by ``stop()``, which re-raises its errors."""

    def __init__(self, transport: RabbitMQTransport, **options: Any) -> None:
        self._stopping = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, args=(transport, options))
        self._thread.start()

    def _serve(self, transport: RabbitMQTransport, options: dict[str, Any]) -> None:
        try:
            transport.serve(stop=self._stopping.is_set, **options)
        except BaseException as exc:
            self._error = exc

    def stop(self) -> None:
        self._stopping.set()
        error = self.outcome()
        if error is not None:
            raise error

    def outcome(self, timeout: float = WAIT) -> BaseException | None:
        """Wait for ``serve`` to return by itself (or after stop); what it raised, if anything."""
        self._thread.join(timeout=timeout)
        assert not self._thread.is_alive(), "serve() did not return"
        return self._error


def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def settled(vhost: broker.Vhost, name: str) -> bool:
    """True when a queue holds no message, neither ready nor waiting for an ack."""
    queue = broker.queues(vhost)[name]
    return queue["messages_ready"] == 0 and queue["messages_unacknowledged"] == 0


def submit_queue(prefix: str) -> str:
    return Names(prefix).submit_queue


def declare_shared(make: Make) -> None:
    """Connect a coordinator, which declares the exchanges and the submit queue, not consuming."""
    make("coordinator").subscribe(SUBMIT, lambda body: None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- delivery ------------------------------------------------------------------------------------


def test_round_trip_on_both_topics_with_a_reply_published_from_the_handler(
    make: Make, vhost: broker.Vhost, prefix: str
) -> None:
    coordinator, hospital = make("coordinator"), make("hospital-1")
    transport: Transport = coordinator  # satisfies the protocol (checked by mypy)
    replies: list[bytes] = []
    coordinator.subscribe(SUBMIT, replies.append)
    announced: list[bytes] = []

    def on_announce(body: bytes) -> None:
        announced.append(body)
        hospital.publish(SUBMIT, b"update for " + body)  # from the serving thread

    hospital.subscribe(ANNOUNCE, on_announce)
    transport.publish(ANNOUNCE, b"round 1")

    serve_until(hospital, lambda: len(announced) == 1)
    serve_until(coordinator, lambda: len(replies) == 1)

    assert announced == [b"round 1"]
    assert replies == [b"update for round 1"]
    queues = broker.queues(vhost)
    assert set(queues) == {submit_queue(prefix), f"{prefix}.announce.hospital-1"}
    assert all(q["durable"] and q["messages_ready"] == 0 for q in queues.values())
    assert all(q["messages_unacknowledged"] == 0 for q in queues.values())
    exchange = broker.exchanges(vhost)[f"{prefix}.announce"]
    assert exchange["type"] == "fanout" and exchange["durable"]
    exchange = broker.exchanges(vhost)[f"{prefix}.submit"]
    assert exchange["type"] == "direct" and exchange["durable"]


def test_announce_fans_out_to_every_hospital_queue(make: Make) -> None:
    declare_shared(make)
    coordinator = make("coordinator")
    hospitals = {name: make(name) for name in ("hospital-1", "hospital-2", "hospital-3")}
    inboxes: dict[str, list[bytes]] = {name: [] for name in hospitals}
    for name, transport in hospitals.items():
        transport.subscribe(ANNOUNCE, inboxes[name].append)

    coordinator.publish(ANNOUNCE, b"round 1")
    coordinator.publish(ANNOUNCE, b"round 2")

    for name, transport in hospitals.items():
        inbox = inboxes[name]
        serve_until(transport, lambda: len(inbox) == 2)  # noqa: B023  (called before the next loop)
    assert all(inbox == [b"round 1", b"round 2"] for inbox in inboxes.values())


def test_a_hospital_queue_keeps_announcements_sent_while_it_was_away(
    make: Make, vhost: broker.Vhost, prefix: str
) -> None:
    declare_shared(make)
    coordinator, first = make("coordinator"), make("hospital-1")
    seen: list[bytes] = []
    first.subscribe(ANNOUNCE, seen.append)
    coordinator.publish(ANNOUNCE, b"round 1")
    serve_until(first, lambda: len(seen) == 1)

    coordinator.publish(ANNOUNCE, b"round 2")  # subscribed, but not serving
    first.close()
    coordinator.publish(ANNOUNCE, b"round 3")  # the hospital process is gone
    assert broker.queues(vhost)[f"{prefix}.announce.hospital-1"]["messages_ready"] == 2

    again = make("hospital-1")
    again.subscribe(ANNOUNCE, seen.append)
    serve_until(again, lambda: len(seen) == 3)
    assert seen == [b"round 1", b"round 2", b"round 3"]


def test_persistent_messages_survive_broker_restarts_and_clients_reconnect_by_themselves(
    make: Make,
) -> None:
    coordinator, hospital = make("coordinator"), make("hospital-1")
    received: list[bytes] = []
    coordinator.subscribe(SUBMIT, received.append)
    hospital.publish(SUBMIT, b"s1")
    hospital.publish(SUBMIT, b"s2")

    broker.stop_app()  # both clients are connected and lose their connections
    broker.start_app()
    server = Server(coordinator)
    wait_for(lambda: len(received) == 2, "the messages published before the restart")
    hospital.publish(SUBMIT, b"s3")
    wait_for(lambda: len(received) == 3, "a message published after the restart")

    broker.stop_app()  # now while the coordinator is serving
    late = threading.Thread(target=hospital.publish, args=(SUBMIT, b"s4"))
    late.start()
    time.sleep(0.5)
    assert late.is_alive(), "publish() returned although no broker could confirm it"
    broker.start_app()
    late.join(timeout=WAIT)
    wait_for(lambda: len(received) == 4, "a message published while the broker was down")
    server.stop()

    assert received == [b"s1", b"s2", b"s3", b"s4"]
    assert coordinator.reconnects >= 2 and hospital.reconnects >= 2


def test_serve_raises_when_the_broker_stays_away_and_the_transport_recovers_later(
    make: Make, vhost: broker.Vhost, prefix: str
) -> None:
    patience = Backoff(initial=0.1, maximum=0.3, give_up_after=1.5)
    coordinator = make("coordinator", backoff=patience)
    coordinator.subscribe(SUBMIT, lambda body: None)
    server = Server(coordinator)
    wait_for(lambda: broker.queues(vhost)[submit_queue(prefix)]["consumers"] == 1, "a consumer")
    broker.stop_app()
    try:
        started = time.monotonic()
        error = server.outcome()
        assert time.monotonic() - started < 10.0
    finally:
        broker.start_app()
    assert isinstance(error, TransportError)
    assert f"{coordinator.endpoint} unreachable" in str(error)
    coordinator.publish(SUBMIT, b"after the outage")  # a new call starts a new attempt window
    assert broker.queues(vhost)[submit_queue(prefix)]["messages_ready"] == 1


def test_an_unacked_message_is_redelivered_when_its_consumer_dies_mid_handler(
    make: Make, vhost: broker.Vhost, prefix: str
) -> None:
    hospital, crashing, rescuer = make("hospital-1"), make("coordinator"), make("coordinator")
    started, release = threading.Event(), threading.Event()
    first: list[bytes] = []

    def stuck(body: bytes) -> None:
        first.append(body)
        started.set()
        release.wait(WAIT)

    crashing.subscribe(SUBMIT, stuck)  # declares the submit queue; consumes only in serve()
    for body in (b"m1", b"m2", b"m3"):
        hospital.publish(SUBMIT, body)
    server = Server(crashing)
    assert started.wait(WAIT)
    submit = broker.queues(vhost)[submit_queue(prefix)]
    assert (submit["messages_unacknowledged"], submit["messages_ready"]) == (1, 2)  # prefetch 1

    crashing.close()  # the consumer goes away while its handler still runs
    release.set()
    server.stop()
    received: list[bytes] = []
    rescuer.subscribe(SUBMIT, received.append)
    serve_until(rescuer, lambda: len(received) == 3)

    assert first == [b"m1"]
    assert received == [b"m1", b"m2", b"m3"]


def test_heartbeats_survive_a_handler_three_times_longer_than_the_heartbeat(
    make: Make, vhost: broker.Vhost, prefix: str
) -> None:
    coordinator, hospital = make("coordinator", heartbeat=2), make("hospital-1")
    handled: list[bytes] = []
    connections_during: list[list[dict[str, Any]]] = []

    def slow(body: bytes) -> None:
        time.sleep(1.0)
        connections_during.append(broker.connections(vhost))
        time.sleep(6.0)  # 7 s in all: the broker drops a silent client after about 4 s
        handled.append(body)

    coordinator.subscribe(SUBMIT, slow)
    hospital.publish(SUBMIT, b"big aggregation")
    before = {c["name"] for c in broker.connections(vhost) if c["timeout"] == 2}
    serve_until(coordinator, lambda: len(handled) == 1)
    serve_until(coordinator, lambda: settled(vhost, submit_queue(prefix)))

    assert len(before) == 1, "the coordinator should hold one connection with a 2 s heartbeat"
    after = {c["name"] for c in broker.connections(vhost) if c["timeout"] == 2}
    assert after == before == {c["name"] for c in connections_during[0] if c["timeout"] == 2}
    assert coordinator.reconnects == 0
    assert handled == [b"big aggregation"]


def test_on_idle_runs_while_idle_on_the_handler_thread_and_never_during_a_handler(
    make: Make,
) -> None:
    coordinator, hospital = make("coordinator"), make("hospital-1")
    busy = False
    threads: set[int] = set()
    idle_calls: list[float] = []
    overlaps: list[float] = []
    handled: list[bytes] = []

    def handler(body: bytes) -> None:
        nonlocal busy
        busy = True
        threads.add(threading.get_ident())
        time.sleep(0.3)
        handled.append(body)
        busy = False

    def on_idle() -> None:
        threads.add(threading.get_ident())
        idle_calls.append(time.monotonic())
        if busy:
            overlaps.append(time.monotonic())

    coordinator.subscribe(SUBMIT, handler)
    for body in (b"a", b"b", b"c"):
        hospital.publish(SUBMIT, body)
    serve_until(coordinator, lambda: len(handled) == 3, on_idle=on_idle, idle_interval=0.05)
    idle_calls.clear()
    started = time.monotonic()
    serve_until(
        coordinator, lambda: time.monotonic() - started > 1.0, on_idle=on_idle, idle_interval=0.05
    )

    assert threads == {threading.get_ident()}
    assert overlaps == []
    assert len(idle_calls) >= 10  # about 20 in one idle second at a 0.05 s interval
    assert max(b - a for a, b in itertools.pairwise(idle_calls)) < 0.5


def test_after_a_stalled_turn_on_idle_waits_for_the_deliveries_queued_meanwhile(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A coordinator paused past a deadline (SIGSTOP, a suspended VM) judges it only once the
    submissions queued meanwhile are handled; a slow handler stands in for the pause."""
    monkeypatch.setattr(rabbitmq_transport, "_STALL_SECONDS", 0.2)
    monkeypatch.setattr(rabbitmq_transport, "_RESUME_GRACE_SECONDS", 1.0)
    coordinator, hospital = make("coordinator"), make("hospital-1")
    events: list[str] = []

    def handler(body: bytes) -> None:
        if body == b"a":
            time.sleep(0.4)
        events.append(body.decode())

    coordinator.subscribe(SUBMIT, handler)
    for body in (b"a", b"b", b"c"):
        hospital.publish(SUBMIT, body)
    serve_until(
        coordinator,
        lambda: "c" in events and events[-1] == "idle",
        on_idle=lambda: events.append("idle"),
        idle_interval=0.05,
    )

    after_stall = events[events.index("a") :]
    assert after_stall[:3] == ["a", "b", "c"], events


def test_a_handler_that_raises_is_logged_and_acked_so_it_cannot_loop(
    make: Make, vhost: broker.Vhost, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    coordinator, hospital = make("coordinator"), make("hospital-1")
    calls: list[bytes] = []

    def handler(body: bytes) -> None:
        calls.append(body)
        if body == b"bug":
            raise ValueError("a bug in the handler")

    coordinator.subscribe(SUBMIT, handler)
    hospital.publish(SUBMIT, b"bug")
    hospital.publish(SUBMIT, b"fine")
    with caplog.at_level(logging.ERROR, logger="common.transport.rabbitmq"):
        serve_until(coordinator, lambda: len(calls) == 2)
        serve_until(coordinator, lambda: settled(vhost, submit_queue(prefix)))

    assert calls == [b"bug", b"fine"]
    assert coordinator.handler_errors == 1
    assert "amqp_handler_failed" in caplog.text and "ValueError" in caplog.text
    assert broker.queues(vhost)[submit_queue(prefix)]["messages_ready"] == 0


def test_an_announcement_nobody_can_receive_yet_is_a_warning_not_an_error(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="common.transport.rabbitmq"):
        make("coordinator").publish(ANNOUNCE, b"round 1")
    assert "amqp_announce_unroutable" in caplog.text


def test_a_submit_whose_queue_was_deleted_is_retried_until_the_coordinator_declares_it_again(
    make: Make, vhost: broker.Vhost, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    coordinator, hospital = make("coordinator"), make("hospital-1")
    received: list[bytes] = []
    coordinator.subscribe(SUBMIT, received.append)
    server = Server(coordinator)
    hospital.publish(SUBMIT, b"before")
    wait_for(lambda: received == [b"before"], "the first message")
    broker.ctl("delete_queue", "-p", vhost.name, submit_queue(prefix))

    with caplog.at_level(logging.WARNING, logger="common.transport.rabbitmq"):
        hospital.publish(SUBMIT, b"after")  # unroutable until the coordinator declares it
        wait_for(lambda: len(received) == 2, "the message sent while the queue was gone")
    server.stop()

    assert received == [b"before", b"after"]
    assert hospital.reconnects == 0 and coordinator.reconnects == 1


def test_a_hospital_started_before_the_coordinator_waits_for_its_exchanges(
    make: Make, vhost: broker.Vhost, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    patience = Backoff(initial=0.1, maximum=0.3, give_up_after=1.0)  # for an absent broker
    hospital = make("hospital-1", backoff=patience)
    with caplog.at_level(logging.WARNING, logger="common.transport.rabbitmq"):
        early = threading.Thread(target=hospital.publish, args=(SUBMIT, b"early"))
        early.start()
        wait_for(lambda: "amqp_waiting_for_topology" in caplog.text, "the hospital to wait")
        time.sleep(2.0)  # twice give_up_after: waiting for the coordinator is not an outage
        assert early.is_alive()
        assert f"{prefix}.submit" not in broker.exchanges(vhost)  # a hospital declares none
        declare_shared(make)
        early.join(timeout=WAIT)
    assert not early.is_alive()
    assert "waiting for the coordinator" in caplog.text and "amqp_gave_up" not in caplog.text
    assert broker.queues(vhost)[submit_queue(prefix)]["messages_ready"] == 1


def test_a_message_the_broker_keeps_nacking_fails_after_the_publish_attempts(
    make: Make, vhost: broker.Vhost, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    full = '{"max-length": 0, "overflow": "reject-publish"}'  # every publish is nacked ...
    broker.ctl("set_policy", "-p", vhost.name, "full", f"^{prefix}\\.submit\\.", full)
    declare_shared(make)
    hospital = make("hospital-1", publish_attempts=3)
    hospital.publish(SUBMIT, b"taken")  # ... once full: a quorum queue takes one past the limit

    with (
        caplog.at_level(logging.WARNING, logger="common.transport.rabbitmq"),
        pytest.raises(TransportError, match=r"after 3 attempts \(last: nacked\)") as raised,
    ):
        hospital.publish(SUBMIT, b"refused")

    assert f"RabbitMQ at {hospital.endpoint} did not take a submit message" in str(raised.value)
    retries = [line for line in caplog.text.splitlines() if "amqp_publish_retry" in line]
    assert len(retries) == 2 and "attempt=1" in retries[0] and "attempt=2" in retries[1]
    hospital.publish(ANNOUNCE, b"the transport still works")  # only that message failed


# -- failures and configuration ------------------------------------------------------------------


def test_publish_to_an_unreachable_broker_raises_within_a_bounded_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"amqp://hefl:s3cret@127.0.0.1:{free_port()}/%2F"
    backoff = Backoff(initial=0.1, maximum=0.4, give_up_after=1.5)
    started = time.monotonic()
    with (
        caplog.at_level(logging.INFO, logger="common.transport.rabbitmq"),
        RabbitMQTransport(identity="hospital-1", url=url, backoff=backoff) as transport,
        pytest.raises(TransportError, match="unreachable") as raised,
    ):
        transport.publish(SUBMIT, b"lost")
    assert time.monotonic() - started < 5.0
    assert "amqp://hefl@127.0.0.1" in str(raised.value)
    assert "s3cret" not in str(raised.value) and "s3cret" not in caplog.text
    assert "amqp_reconnecting" in caplog.text and "attempt=2" in caplog.text


def test_reconnect_delays_grow_exponentially_up_to_the_cap_and_then_give_up() -> None:
    now = [0.0]
    delays: list[float] = []

    def sleep(seconds: float) -> None:
        delays.append(seconds)
        now[0] += seconds

    backoff = Backoff(initial=1.0, maximum=8.0, jitter=0.0, give_up_after=60.0)
    with (
        RabbitMQTransport(
            identity="coordinator",
            url=f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F",
            backoff=backoff,
            sleep=sleep,
            clock=lambda: now[0],
        ) as transport,
        pytest.raises(TransportError, match="unreachable for 60"),
    ):
        transport.publish(SUBMIT, b"x")
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0, 5.0]


def test_jitter_shortens_a_delay_by_at_most_its_fraction() -> None:
    backoff = Backoff(initial=1.0, maximum=30.0, jitter=0.5)
    assert backoff.delay(3, 0.0) == 4.0
    assert 2.0 < backoff.delay(3, 0.999) < 2.01
    assert backoff.delay(1000, 0.0) == 30.0
    with pytest.raises(ConfigError):
        Backoff(jitter=1.5)


def test_the_broker_url_comes_from_the_environment(
    make: Make, vhost: broker.Vhost, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert broker_url({}) == DEFAULT_BROKER_URL
    monkeypatch.setenv(BROKER_URL_ENV, vhost.url)
    declare_shared(make)
    transport = make("hospital-1", url=None)
    assert transport.endpoint == f"amqp://guest@127.0.0.1:5672/{vhost.name}"
    transport.publish(SUBMIT, b"hello")
    assert broker.queues(vhost)[submit_queue(prefix)]["messages_ready"] == 1


def test_urls_are_parsed_and_never_show_their_password() -> None:
    secure = RabbitMQTransport(identity="hospital-3", url="amqps://hefl:pw@localhost/fl%2Fprod")
    assert secure.endpoint == "amqps://hefl@localhost:5671/fl%2Fprod"
    assert "pw" not in repr(secure)
    with pytest.raises(ConfigError, match="CA file"):
        RabbitMQTransport(identity="h", url="amqps://localhost/", ca_file="/nonexistent/ca.pem")
    with pytest.raises(ConfigError, match="amqps"):
        RabbitMQTransport(identity="h", url="amqp://localhost/", ca_file="/etc/hosts")
    with pytest.raises(ConfigError, match="amqp://"):
        RabbitMQTransport(identity="h", url="http://localhost/")
    with pytest.raises(ConfigError, match="identity"):
        RabbitMQTransport(identity="hospital 3", url="amqp://localhost/")
    with pytest.raises(ConfigError, match="heartbeat"):
        RabbitMQTransport(identity="h", url="amqp://localhost/", heartbeat=0)


def test_unknown_topics_and_a_closed_transport_are_rejected(make: Make) -> None:
    transport = make("coordinator")
    with pytest.raises(TransportError, match="unknown topic"):
        transport.publish("announce.h1", b"x")
    with pytest.raises(TransportError, match="unknown topic"):
        transport.subscribe("results", lambda body: None)
    transport.publish(SUBMIT, b"x")
    transport.close()
    with pytest.raises(TransportError, match="closed"):
        transport.publish(SUBMIT, b"y")


def test_the_package_exports_the_rabbitmq_names_but_in_memory_users_never_load_pika() -> None:
    for name in common.transport.__all__:
        assert hasattr(common.transport, name)
    for name in common.transport.rabbitmq.__all__:
        assert hasattr(common.transport.rabbitmq, name)
    assert common.transport.RabbitMQTransport is RabbitMQTransport
    probe = "import sys, common.transport; assert 'pika' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0

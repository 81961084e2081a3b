"""RabbitMQ as a three-node cluster with quorum queues: clients given every node's URL fail over.

One cluster for the module (``testkit.broker_cluster``: three nodes on this host, beside the
local test node, which is left alone); each test gets its own virtual host, broker users and
prefix, and every node killed in a test is started again only after it, so each test shows the
flow going on while the node is still down.

What the transport guarantees, and these tests hold it to: a message whose ``publish`` returned
(the broker confirmed it, which for a quorum queue means a majority of its nodes wrote it) is
delivered, at least once; the transport does not deduplicate (handlers are idempotent, and the
protocol rejects replays), so a message can come twice only when its confirm or its ack was lost
with the node: at most once per publisher and once for the consumer (prefetch 1) per node lost.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, Literal

import pytest

from common.transport import ANNOUNCE, SUBMIT
from common.transport.rabbitmq import Backoff, RabbitMQTransport
from testkit.broker import BrokerError
from testkit.broker_cluster import BrokerCluster, ClusterSite, Node, broker_cluster

FAST = Backoff(initial=0.1, maximum=1.0, give_up_after=60.0)
WAIT = 60.0  # seconds any single expectation may take before the test fails
HOSPITALS = ("hospital-1", "hospital-2")
Received = list[tuple[bytes, str]]
Connect = Callable[..., RabbitMQTransport]


@pytest.fixture(scope="module")
def cluster() -> Iterator[BrokerCluster]:
    with contextlib.ExitStack() as stack:
        try:
            made = stack.enter_context(broker_cluster())
        except BrokerError as exc:
            pytest.fail(str(exc), pytrace=False)
        yield made


@pytest.fixture(autouse=True)
def every_node_back_after_the_test(cluster: BrokerCluster) -> Iterator[None]:
    yield
    for node in cluster.nodes:
        if not node.running:
            cluster.start_node(node)


@pytest.fixture
def site(cluster: BrokerCluster) -> Iterator[ClusterSite]:
    with cluster.site(HOSPITALS, prefix=f"hefl-test-{uuid.uuid4().hex[:8]}") as made:
        yield made


@pytest.fixture
def connect(site: ClusterSite) -> Iterator[Connect]:
    """Transports of the site's participants, each given the URLs of all three nodes."""
    made: list[RabbitMQTransport] = []

    def build(identity: str, **options: Any) -> RabbitMQTransport:
        defaults: dict[str, Any] = {"prefix": site.plan.prefix, "backoff": FAST}
        if identity == "coordinator":
            defaults["senders"] = HOSPITALS
        url = site.url(identity)
        transport = RabbitMQTransport(identity=identity, url=url, **{**defaults, **options})
        made.append(transport)
        return transport

    yield build
    for transport in made:
        transport.close()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def serve_until(transport: RabbitMQTransport, done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    transport.serve(stop=lambda: done() or time.monotonic() > deadline)
    assert done(), "expected deliveries did not arrive in time"


class Server:
    """``serve`` on a background thread until ``stop()``, which re-raises what it raised."""

    def __init__(self, transport: RabbitMQTransport) -> None:
        self._stopping = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, args=(transport,))
        self._thread.start()

    def _serve(self, transport: RabbitMQTransport) -> None:
        try:
            transport.serve(stop=self._stopping.is_set)
        except BaseException as exc:
            self._error = exc

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=WAIT)
        assert not self._thread.is_alive(), "serve() did not return"
        if self._error is not None:
            raise self._error


class Stream(threading.Thread):
    """Publishes numbered SUBMIT messages until stopped, keeping those the broker confirmed."""

    def __init__(self, transport: RabbitMQTransport) -> None:
        super().__init__(name=f"stream-{transport.identity}")
        self.transport = transport
        self.confirmed: list[bytes] = []
        self.error: BaseException | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                body = f"{self.transport.identity}:{len(self.confirmed)}".encode()
                self.transport.publish(SUBMIT, body)
                self.confirmed.append(body)
        except BaseException as exc:
            self.error = exc

    def finish(self) -> None:
        self.stopping.set()
        self.join(timeout=WAIT)
        assert not self.is_alive(), f"{self.name} did not stop"


def settled(cluster: BrokerCluster, site: ClusterSite, queue: str) -> bool:
    row = queue_row(cluster, site, queue)
    return row["messages_ready"] == 0 and row["messages_unacknowledged"] == 0


def queue_row(cluster: BrokerCluster, site: ClusterSite, queue: str) -> dict[str, Any]:
    """The queue as a running node reports it."""
    return cluster.queues(site.plan.vhost)[queue]


def test_quorum_queues_span_the_three_nodes_and_both_topics_flow_over_the_url_list(
    cluster: BrokerCluster, site: ClusterSite, connect: Connect
) -> None:
    coordinator = connect("coordinator")
    inbox: Received = []
    coordinator.subscribe_with_sender(SUBMIT, lambda body, sender: inbox.append((body, sender)))
    hospitals = {name: connect(name) for name in HOSPITALS}
    seen: dict[str, list[bytes]] = {name: [] for name in HOSPITALS}
    for name, hospital in hospitals.items():
        hospital.subscribe(ANNOUNCE, seen[name].append)

    coordinator.publish(ANNOUNCE, b"round 1")
    for name, hospital in hospitals.items():
        serve_until(hospital, lambda: len(seen[name]) == 1)  # noqa: B023  (called at once)
        hospital.publish(SUBMIT, f"update of {name}".encode())
    serve_until(coordinator, lambda: len(inbox) == 2)

    assert seen == {name: [b"round 1"] for name in HOSPITALS}
    assert sorted(inbox) == [
        (b"update of hospital-1", "hospital-1"),
        (b"update of hospital-2", "hospital-2"),
    ]
    every_node = {node.name for node in cluster.nodes}
    queues = cluster.queues(site.plan.vhost)
    assert set(queues) == {site.plan.names.submit_queue} | {
        site.plan.names.announce_queue(name) for name in HOSPITALS
    }
    for queue in queues.values():
        assert queue["type"] == "quorum" and queue["durable"]
        assert set(queue["members"]) == set(queue["online"]) == every_node
    for transport in (coordinator, *hospitals.values()):
        assert transport.endpoints == tuple(
            f"amqp://{site.plan.user(transport.identity)}@127.0.0.1:{port}/{site.plan.vhost}"
            for port in cluster.ports
        )
        assert transport.connected_to in transport.endpoints


Victim = Literal["the publisher's node", "the consumer's node", "the submit queue's leader"]


@pytest.mark.parametrize(
    "victim", ["the publisher's node", "the consumer's node", "the submit queue's leader"]
)
def test_losing_a_node_mid_stream_loses_no_confirmed_message_and_the_flow_goes_on_without_it(
    cluster: BrokerCluster, site: ClusterSite, connect: Connect, victim: Victim
) -> None:
    coordinator = connect("coordinator")
    inbox: Received = []
    coordinator.subscribe_with_sender(SUBMIT, lambda body, sender: inbox.append((body, sender)))
    hospitals = {name: connect(name) for name in HOSPITALS}
    announced: dict[str, list[bytes]] = {name: [] for name in HOSPITALS}
    for name, hospital in hospitals.items():
        hospital.subscribe(ANNOUNCE, announced[name].append)
    server = Server(coordinator)
    streams = [Stream(hospital) for hospital in hospitals.values()]
    for stream in streams:
        stream.start()
    try:
        wait_for(lambda: len(inbox) >= 30, "the stream to flow")
        dead = pick(cluster, site, victim, coordinator, hospitals["hospital-1"])
        cluster.kill(dead)
        before = [len(stream.confirmed) for stream in streams]
        wait_for(
            lambda: all(len(s.confirmed) >= n + 50 for s, n in zip(streams, before, strict=True)),
            "50 more messages confirmed by each hospital after the kill",
        )
    finally:
        for stream in streams:
            stream.finish()
    confirmed = {body for stream in streams for body in stream.confirmed}
    wait_for(lambda: confirmed <= {body for body, _ in inbox}, "every confirmed message")
    server.stop()
    coordinator.publish(ANNOUNCE, b"after the loss")
    for name, hospital in hospitals.items():
        serve_until(hospital, lambda: announced[name] == [b"after the loss"])  # noqa: B023

    assert [stream.error for stream in streams] == [None, None]
    received = Counter(body for body, _ in inbox)
    assert set(received) == confirmed  # nothing lost, nothing unknown
    assert all(body.decode().startswith(sender + ":") for body, sender in inbox)
    duplicates = sum(count - 1 for count in received.values())
    assert duplicates <= len(streams) + 1, received.most_common(5)
    assert not dead.running, "the dead node came back: the flow must not have waited for it"
    for transport in (coordinator, *hospitals.values()):
        assert transport.connected_to is not None
        assert cluster.node_at(transport.connected_to) is not dead
    submit = queue_row(cluster, site, site.plan.names.submit_queue)
    assert dead.name not in submit["online"] and len(submit["online"]) == 2
    assert submit["leader"] != dead.name
    wait_for(
        lambda: (
            (submit := queue_row(cluster, site, site.plan.names.submit_queue))["messages_ready"]
            + submit["messages_unacknowledged"]
            == 0
        ),
        "the submit queue to settle",
    )
    if victim == "the publisher's node":
        assert hospitals["hospital-1"].reconnects >= 1
    if victim == "the consumer's node":
        assert coordinator.reconnects >= 1


def pick(
    cluster: BrokerCluster,
    site: ClusterSite,
    victim: Victim,
    coordinator: RabbitMQTransport,
    publisher: RabbitMQTransport,
) -> Node:
    """The node to kill."""
    if victim == "the submit queue's leader":
        leader = queue_row(cluster, site, site.plan.names.submit_queue)["leader"]
        return next(node for node in cluster.nodes if node.name == leader)
    client = publisher if victim == "the publisher's node" else coordinator
    assert client.connected_to is not None
    return cluster.node_at(client.connected_to)


def test_a_publisher_new_to_a_queue_whose_leader_was_just_lost_gets_its_message_taken(
    cluster: BrokerCluster, site: ClusterSite, connect: Connect
) -> None:
    """A channel whose first message to a quorum queue finds its leader gone is nacked, and on
    RabbitMQ 3.10 keeps being nacked after the new leader is elected: the transport retries on a
    new channel (``publisher``)."""
    coordinator = connect("coordinator")
    inbox: Received = []
    coordinator.subscribe_with_sender(SUBMIT, lambda body, sender: inbox.append((body, sender)))
    leader = queue_row(cluster, site, site.plan.names.submit_queue)["leader"]
    dead = next(node for node in cluster.nodes if node.name == leader)
    cluster.kill(dead)
    hospital = connect("hospital-1")
    hospital.publish(SUBMIT, b"to the queue whose leader just died")
    serve_until(coordinator, lambda: len(inbox) == 1)

    assert inbox == [(b"to the queue whose leader just died", "hospital-1")]
    assert queue_row(cluster, site, site.plan.names.submit_queue)["leader"] != dead.name

"""A hospital cannot read, block or speak for another through the broker: the real RabbitMQ says so.

Each test gets a throw-away virtual host with one broker user per participant (coordinator,
hospital-1, hospital-2), confined by ``common.transport.brokerconf`` as a deployment is. The
isolation tests run twice: with the users and permissions made by ``rabbitmqctl``, and with the
definitions JSON a deployment loads (imported by ``rabbitmqctl import_definitions``), which also
shows that its password hashes log in. A hospital tries what it must not do through ``Probe``
(pika, one operation per channel, the broker's reply code) and what it must do through
``RabbitMQTransport``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from common.errors import TransportError
from common.transport import ANNOUNCE, SUBMIT
from common.transport.brokerpki import make_ca
from common.transport.rabbitmq import Backoff, Outcome, Probe, RabbitMQTransport
from testkit import broker

FAST = Backoff(initial=0.1, maximum=1.0, give_up_after=30.0)
WAIT = 20.0
HOSPITALS = ("hospital-1", "hospital-2")
ACCESS_REFUSED, PRECONDITION_FAILED = 403, 406
Received = list[tuple[bytes, str]]
#: Tests of the transport's own checks, which do not depend on how the users were made.
DEFINITIONS_ONLY = pytest.mark.parametrize("site", ["definitions"], indirect=True)


@pytest.fixture(scope="module", autouse=True)
def tls_broker() -> None:
    """The local node with its TLS listener (configured and restarted on first use)."""
    try:
        broker.ensure_tls()
    except broker.BrokerError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(params=["rabbitmqctl", "definitions"])
def site(request: pytest.FixtureRequest) -> Iterator[broker.Site]:
    """A site made both ways, or one way for the tests marked so (DEFINITIONS_ONLY)."""
    with broker.temporary_site(HOSPITALS, via=request.param) as made:
        yield made


@pytest.fixture
def connect(site: broker.Site) -> Iterator[Callable[..., RabbitMQTransport]]:
    """Transports of the site's participants, each with its own credentials; closed afterwards."""
    made: list[RabbitMQTransport] = []

    def build(identity: str, *, as_user: str | None = None, **options: Any) -> RabbitMQTransport:
        defaults: dict[str, Any] = {"prefix": site.plan.prefix, "backoff": FAST}
        url = site.url(as_user or identity)
        transport = RabbitMQTransport(identity=identity, url=url, **{**defaults, **options})
        made.append(transport)
        return transport

    yield build
    for transport in made:
        transport.close()


def probe(site: broker.Site, identity: str) -> Probe:
    return Probe(site.url(identity))


def serve_until(transport: RabbitMQTransport, done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    transport.serve(stop=lambda: done() or time.monotonic() > deadline)
    assert done(), "expected deliveries did not arrive in time"


def refused(outcome: Outcome, code: int) -> bool:
    return not outcome.allowed and outcome.code == code


def coordinator_with_inbox(
    connect: Callable[..., RabbitMQTransport], site: broker.Site, **options: Any
) -> tuple[RabbitMQTransport, Received]:
    """The coordinator, subscribed to SUBMIT with senders (declares the shared topology)."""
    options.setdefault("senders", HOSPITALS)  # users named like the coordinator's own
    coordinator = connect("coordinator", **options)
    inbox: Received = []
    coordinator.subscribe_with_sender(SUBMIT, lambda body, sender: inbox.append((body, sender)))
    return coordinator, inbox


def ready(site: broker.Site, queue: str) -> int:
    return int(broker.queues(site.vhost)[queue]["messages_ready"])


# -- what a hospital cannot do to another ----------------------------------------------------------


def test_a_hospital_cannot_consume_purge_or_delete_another_hospitals_queue(
    site: broker.Site, connect: Callable[..., RabbitMQTransport]
) -> None:
    coordinator, _ = coordinator_with_inbox(connect, site)
    connect("hospital-2").subscribe(ANNOUNCE, lambda body: None)
    coordinator.publish(ANNOUNCE, b"round 1")
    theirs = site.plan.names.announce_queue("hospital-2")

    with probe(site, "hospital-1") as hospital_1:
        tries = {
            "consume": hospital_1.consume(theirs),
            "get": hospital_1.get(theirs),
            "purge": hospital_1.purge(theirs),
            "delete": hospital_1.delete_queue(theirs),
            "bind": hospital_1.bind(theirs, site.plan.names.announce_exchange),
            "consume submit": hospital_1.consume(site.plan.names.submit_queue),
        }
    with probe(site, "coordinator") as coordinator_probe:
        tries["coordinator consumes"] = coordinator_probe.consume(theirs)

    assert {
        name: refused(outcome, ACCESS_REFUSED) for name, outcome in tries.items()
    } == dict.fromkeys(tries, True), tries
    assert ready(site, theirs) == 1  # hospital-2's announcement is still there


def test_a_hospital_cannot_publish_into_another_hospitals_queue(
    site: broker.Site, connect: Callable[..., RabbitMQTransport]
) -> None:
    coordinator_with_inbox(connect, site)
    connect("hospital-2").subscribe(ANNOUNCE, lambda body: None)
    names = site.plan.names
    theirs = names.announce_queue("hospital-2")

    with probe(site, "hospital-1") as hospital_1:
        own_id = site.plan.user("hospital-1")
        default_exchange = hospital_1.publish("", theirs, b"forged", user_id=own_id)
        announce_exchange = hospital_1.publish(names.announce_exchange, "", b"forged")

    assert refused(default_exchange, ACCESS_REFUSED) and "amq.default" in default_exchange.text
    assert refused(announce_exchange, ACCESS_REFUSED)
    assert ready(site, theirs) == 0


def test_a_hospital_cannot_publish_with_another_users_user_id(
    site: broker.Site, connect: Callable[..., RabbitMQTransport]
) -> None:
    coordinator_with_inbox(connect, site)
    names = site.plan.names
    with probe(site, "hospital-1") as hospital_1:
        as_other = {
            other: hospital_1.publish(
                names.submit_exchange, names.submit_queue, b"x", user_id=site.plan.user(other)
            )
            for other in ("hospital-2", "coordinator")
        }
        own = hospital_1.publish(
            names.submit_exchange, names.submit_queue, b"x", user_id=site.plan.user("hospital-1")
        )

    for outcome in as_other.values():
        assert refused(outcome, PRECONDITION_FAILED) and "user_id" in outcome.text
    assert own.allowed
    assert ready(site, names.submit_queue) == 1  # only the honest one


def test_a_hospital_cannot_delete_or_extend_the_shared_topology(site: broker.Site) -> None:
    names = site.plan.names
    with probe(site, "coordinator") as coordinator:
        assert coordinator.declare_queue(names.submit_queue).allowed  # the coordinator's own
    with probe(site, "hospital-1") as hospital_1:
        tries = {
            "delete submit exchange": hospital_1.delete_exchange(names.submit_exchange),
            "delete announce exchange": hospital_1.delete_exchange(names.announce_exchange),
            "delete submit queue": hospital_1.delete_queue(names.submit_queue),
            "declare a queue": hospital_1.declare_queue(names.announce_queue("hospital-3")),
            "bind to submit": hospital_1.bind(
                names.announce_queue("hospital-1"), names.submit_exchange
            ),
        }
        own = hospital_1.declare_queue(names.announce_queue("hospital-1"))
    assert all(refused(outcome, ACCESS_REFUSED) for outcome in tries.values()), tries
    assert own.allowed


def test_an_exchange_binding_a_hospital_can_make_routes_no_announcement_to_the_coordinator(
    site: broker.Site, connect: Callable[..., RabbitMQTransport]
) -> None:
    # Write on the submit exchange (to publish) and read on the announce exchange (to bind its
    # queue) let a hospital bind the former to the latter; announcements carry the routing key
    # "" and the submit queue's only binding is its own name, so nothing reaches it.
    coordinator, _ = coordinator_with_inbox(connect, site)
    names = site.plan.names
    with probe(site, "hospital-1") as hospital_1:
        binding = hospital_1.bind_exchange(names.submit_exchange, names.announce_exchange)
    coordinator.publish(ANNOUNCE, b"round 1")
    assert binding.allowed
    assert ready(site, names.submit_queue) == 0


def test_a_hospital_claiming_another_identity_is_refused_that_identitys_queue(
    site: broker.Site, connect: Callable[..., RabbitMQTransport]
) -> None:
    coordinator_with_inbox(connect, site)
    impostor = connect("hospital-2", as_user="hospital-1")
    with pytest.raises(TransportError, match="rejected the topology") as raised:
        impostor.subscribe(ANNOUNCE, lambda body: None)
    assert "ACCESS_REFUSED" in str(raised.value)


def test_a_password_logs_in_its_own_user_only(site: broker.Site) -> None:
    with Probe(site.url("hospital-1")) as own:
        assert own.user == site.plan.user("hospital-1")
    wrong = site.url("hospital-1", password=site.passwords["hospital-2"])
    with pytest.raises(TransportError, match="cannot log in"):
        Probe(wrong)


# -- what the coordinator learns about a sender ----------------------------------------------------


@DEFINITIONS_ONLY
@pytest.mark.parametrize("senders", ["identities", "users", "anyone"])
def test_submissions_reach_the_coordinator_with_their_broker_authenticated_sender(
    site: broker.Site, connect: Callable[..., RabbitMQTransport], senders: str
) -> None:
    accepted = {
        "identities": HOSPITALS,  # users named <namespace><identity>, as the coordinator's own
        "users": site.plan.senders(HOSPITALS),  # user -> identity, explicitly
        "anyone": None,  # any authenticated user, named without the namespace
    }[senders]
    coordinator, inbox = coordinator_with_inbox(connect, site, senders=accepted)
    plain: list[bytes] = []
    coordinator.subscribe(SUBMIT, plain.append)
    connect("hospital-1").publish(SUBMIT, b"from 1")
    connect("hospital-2").publish(SUBMIT, b"from 2")
    serve_until(coordinator, lambda: len(inbox) == 2)
    assert sorted(inbox) == [(b"from 1", "hospital-1"), (b"from 2", "hospital-2")]
    assert sorted(plain) == [b"from 1", b"from 2"]
    assert coordinator.dropped == {}


@DEFINITIONS_ONLY
def test_a_submission_without_user_id_or_from_an_unknown_user_never_reaches_a_handler(
    site: broker.Site,
    connect: Callable[..., RabbitMQTransport],
    caplog: pytest.LogCaptureFixture,
) -> None:
    only_2 = site.plan.senders(["hospital-2"])
    coordinator, inbox = coordinator_with_inbox(connect, site, senders=only_2)
    names = site.plan.names
    with probe(site, "hospital-1") as hospital_1:
        assert hospital_1.publish(names.submit_exchange, names.submit_queue, b"anonymous").allowed
    connect("hospital-1").publish(SUBMIT, b"not a participant here")
    connect("hospital-2").publish(SUBMIT, b"last")
    with caplog.at_level(logging.WARNING, logger="common.transport.rabbitmq"):
        serve_until(coordinator, lambda: len(inbox) == 1)

    assert inbox == [(b"last", "hospital-2")]
    assert coordinator.dropped == {"unauthenticated": 1, "unknown_sender": 1}
    assert "amqp_delivery_dropped" in caplog.text and "reason=unknown_sender" in caplog.text
    assert ready(site, names.submit_queue) == 0  # dropped messages are acked, not redelivered


# -- limits --------------------------------------------------------------------------------------


@DEFINITIONS_ONLY
def test_the_broker_refuses_a_message_over_max_message_size_and_so_does_the_transport(
    site: broker.Site, connect: Callable[..., RabbitMQTransport]
) -> None:
    coordinator, inbox = coordinator_with_inbox(connect, site, max_message_bytes=1000)
    names, user = site.plan.names, site.plan.user("hospital-1")
    hospital = connect("hospital-1")
    limit = hospital.max_message_bytes
    with probe(site, "hospital-1") as hospital_1:
        over = hospital_1.publish(
            names.submit_exchange, names.submit_queue, b"x" * (limit + 1), user_id=user
        )
    with pytest.raises(TransportError, match=f"exceeds the limit of {limit} bytes"):
        hospital.publish(SUBMIT, b"x" * (limit + 1))
    hospital.publish(SUBMIT, b"x" * 2000)  # over what this coordinator takes
    hospital.publish(SUBMIT, b"small")
    serve_until(coordinator, lambda: len(inbox) == 1)

    assert refused(over, PRECONDITION_FAILED) and "larger than configured max size" in over.text
    assert inbox == [(b"small", "hospital-1")]
    assert coordinator.dropped == {"too_large": 1}


def test_the_submit_queue_refuses_publishes_beyond_its_max_length() -> None:
    with broker.temporary_site(HOSPITALS, submit_max_length=2) as site:
        coordinator = RabbitMQTransport(
            identity="coordinator", url=site.url("coordinator"), prefix=site.plan.prefix
        )
        hospital = RabbitMQTransport(
            identity="hospital-1",
            url=site.url("hospital-1"),
            prefix=site.plan.prefix,
            publish_attempts=1,
        )
        with coordinator, hospital:
            coordinator.subscribe(SUBMIT, lambda body: None)
            for body in (b"1", b"2", b"3"):  # a quorum queue checks its length before it takes
                hospital.publish(SUBMIT, body)  # a message: it takes one past the limit
            with pytest.raises(TransportError, match=r"last: nacked"):
                hospital.publish(SUBMIT, b"4")
            assert ready(site, site.plan.names.submit_queue) == 3


def test_a_full_announce_queue_drops_its_oldest_and_never_fails_the_coordinator() -> None:
    with broker.temporary_site(HOSPITALS, announce_max_length=2) as site:
        coordinator = RabbitMQTransport(
            identity="coordinator", url=site.url("coordinator"), prefix=site.plan.prefix
        )
        hospital = RabbitMQTransport(
            identity="hospital-1", url=site.url("hospital-1"), prefix=site.plan.prefix
        )
        with coordinator, hospital:
            coordinator.subscribe(SUBMIT, lambda body: None)
            seen: list[bytes] = []
            hospital.subscribe(ANNOUNCE, seen.append)
            for body in (b"round 1", b"round 2", b"round 3"):
                coordinator.publish(ANNOUNCE, body)  # the hospital is away: not serving
            serve_until(hospital, lambda: len(seen) == 2)
    assert seen == [b"round 2", b"round 3"]


# -- TLS -----------------------------------------------------------------------------------------


def test_over_tls_with_the_deployment_ca_submissions_arrive_with_their_sender() -> None:
    with broker.temporary_site(HOSPITALS, via="definitions") as site:
        options: dict[str, Any] = {"prefix": site.plan.prefix, "ca_file": str(broker.TLS_CA)}
        coordinator = RabbitMQTransport(
            identity="coordinator",
            url=site.url("coordinator", tls=True),
            senders=site.plan.senders(HOSPITALS),
            **options,
        )
        hospital = RabbitMQTransport(
            identity="hospital-1", url=site.url("hospital-1", tls=True), **options
        )
        with coordinator, hospital:
            inbox: Received = []
            coordinator.subscribe_with_sender(
                SUBMIT, lambda body, sender: inbox.append((body, sender))
            )
            hospital.publish(SUBMIT, b"over tls")
            serve_until(coordinator, lambda: len(inbox) == 1)
        assert coordinator.endpoint.startswith("amqps://") and ":5671/" in coordinator.endpoint
    assert inbox == [(b"over tls", "hospital-1")]


@pytest.mark.parametrize("trust", ["system CAs", "another CA"])
def test_a_tls_client_without_the_deployment_ca_is_refused_with_a_certificate_error(
    trust: str, tmp_path: Any
) -> None:
    ca_file = None
    if trust == "another CA":
        ca_file = tmp_path / "other-ca.pem"
        ca_file.write_bytes(make_ca("some other CA").cert)
    with broker.temporary_site(HOSPITALS) as site:
        url = site.url("hospital-1", tls=True)
        started = time.monotonic()
        with (
            RabbitMQTransport(
                identity="hospital-1",
                url=url,
                prefix=site.plan.prefix,
                ca_file=None if ca_file is None else str(ca_file),
                backoff=FAST,
            ) as transport,
            pytest.raises(TransportError, match="certificate") as raised,
        ):
            transport.publish(SUBMIT, b"never sent")
        assert time.monotonic() - started < 5.0  # final at once, not retried
        assert "--broker-ca" in str(raised.value)
        assert site.passwords["hospital-1"] not in str(raised.value)
        with pytest.raises(TransportError, match="certificate"):
            Probe(url, ca_file=None if ca_file is None else str(ca_file))

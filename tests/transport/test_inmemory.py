"""Tests of the in-memory transport: the test double every service test relies on."""

from __future__ import annotations

import pytest

from common.errors import HeflError, TransportError
from common.transport import (
    ANNOUNCE,
    SUBMIT,
    TOPICS,
    Handler,
    InMemoryParticipant,
    InMemoryTransport,
    Transport,
)


def _named(order: list[str], name: str) -> Handler:
    def handler(body: bytes) -> None:
        order.append(name)

    return handler


def test_in_memory_transport_satisfies_the_transport_protocol() -> None:
    transport: Transport = InMemoryTransport()  # checked by mypy
    participant: Transport = InMemoryTransport().participant("hospital-1")
    assert callable(transport.publish) and callable(transport.subscribe)
    assert callable(participant.subscribe_with_sender)
    assert set(TOPICS) == {ANNOUNCE, SUBMIT}


def test_publish_does_not_deliver_until_deliver_all() -> None:
    transport = InMemoryTransport()
    received: list[bytes] = []
    transport.subscribe(SUBMIT, received.append)
    transport.publish(SUBMIT, b"one")
    assert received == []
    assert transport.deliver_all() == 1
    assert received == [b"one"]


def test_delivers_in_publication_order_across_topics() -> None:
    transport = InMemoryTransport()
    log: list[tuple[str, bytes]] = []
    transport.subscribe(ANNOUNCE, lambda body: log.append((ANNOUNCE, body)))
    transport.subscribe(SUBMIT, lambda body: log.append((SUBMIT, body)))
    sent = [(ANNOUNCE, b"1"), (SUBMIT, b"2"), (SUBMIT, b"3"), (ANNOUNCE, b"4"), (SUBMIT, b"5")]
    for topic, body in sent:
        transport.publish(topic, body)
    assert transport.deliver_all() == len(sent)
    assert log == sent


def test_fans_out_each_message_to_every_subscriber_of_its_topic_only() -> None:
    transport = InMemoryTransport()
    hospitals: dict[str, list[bytes]] = {"h1": [], "h2": [], "h3": []}
    for inbox in hospitals.values():
        transport.subscribe(ANNOUNCE, inbox.append)
    coordinator: list[bytes] = []
    transport.subscribe(SUBMIT, coordinator.append)

    transport.publish(ANNOUNCE, b"round 1")
    transport.publish(SUBMIT, b"update")
    transport.deliver_all()

    assert all(inbox == [b"round 1"] for inbox in hospitals.values())
    assert coordinator == [b"update"]


def test_subscribers_of_one_message_are_called_in_subscription_order() -> None:
    transport = InMemoryTransport()
    order: list[str] = []
    for name in ["first", "second", "third"]:
        transport.subscribe(SUBMIT, _named(order, name))
    transport.publish(SUBMIT, b"x")
    transport.deliver_all()
    assert order == ["first", "second", "third"]


def test_handlers_that_publish_do_not_recurse_and_deliver_all_drains_them() -> None:
    transport = InMemoryTransport()
    events: list[str] = []
    depth = 0

    def coordinator(body: bytes) -> None:
        nonlocal depth
        depth += 1
        assert depth == 1, "delivered from inside a handler"
        events.append(f"coordinator got {body.decode()}")
        number = int(body.decode())
        if number < 3:
            transport.publish(ANNOUNCE, str(number + 1).encode())
            events.append(f"coordinator published {number + 1}")
        depth -= 1

    def hospital(body: bytes) -> None:
        nonlocal depth
        depth += 1
        assert depth == 1, "delivered from inside a handler"
        events.append(f"hospital got {body.decode()}")
        transport.publish(SUBMIT, body)
        depth -= 1

    transport.subscribe(SUBMIT, coordinator)
    transport.subscribe(ANNOUNCE, hospital)
    transport.publish(SUBMIT, b"1")

    assert transport.deliver_all() == 5  # 1 -> announce 2 -> submit 2 -> announce 3 -> submit 3
    assert transport.pending == 0
    assert events == [
        "coordinator got 1",
        "coordinator published 2",
        "hospital got 2",
        "coordinator got 2",
        "coordinator published 3",
        "hospital got 3",
        "coordinator got 3",
    ]


def test_a_message_published_by_a_handler_waits_behind_those_already_queued() -> None:
    transport = InMemoryTransport()
    seen: list[bytes] = []

    def handler(body: bytes) -> None:
        seen.append(body)
        if body == b"a":
            transport.publish(SUBMIT, b"from handler")

    transport.subscribe(SUBMIT, handler)
    transport.publish(SUBMIT, b"a")
    transport.publish(SUBMIT, b"b")
    transport.deliver_all()
    assert seen == [b"a", b"b", b"from handler"]


def test_deliver_all_respects_its_limit_and_leaves_the_rest_queued() -> None:
    transport = InMemoryTransport()
    received: list[bytes] = []
    transport.subscribe(SUBMIT, received.append)
    for i in range(5):
        transport.publish(SUBMIT, bytes([i]))
    assert transport.deliver_all(limit=2) == 2
    assert received == [b"\x00", b"\x01"]
    assert transport.pending == 3
    assert transport.deliver_all() == 3
    assert received == [bytes([i]) for i in range(5)]


def test_pending_counts_queued_messages() -> None:
    transport = InMemoryTransport()
    assert transport.pending == 0
    transport.publish(ANNOUNCE, b"a")
    transport.publish(SUBMIT, b"b")
    assert transport.pending == 2
    transport.deliver_all(limit=1)
    assert transport.pending == 1
    transport.deliver_all()
    assert transport.pending == 0
    assert transport.deliver_all() == 0


def test_published_counts_per_topic() -> None:
    transport = InMemoryTransport()
    transport.publish(ANNOUNCE, b"a")
    transport.publish(SUBMIT, b"b")
    transport.publish(SUBMIT, b"c")
    transport.deliver_all()
    assert transport.published[ANNOUNCE] == 1
    assert transport.published[SUBMIT] == 2


def test_message_without_subscribers_is_consumed() -> None:
    transport = InMemoryTransport()
    transport.publish(ANNOUNCE, b"nobody listens")
    assert transport.deliver_all() == 1
    assert transport.pending == 0


def test_late_subscriber_receives_only_what_is_still_queued() -> None:
    transport = InMemoryTransport()
    transport.publish(SUBMIT, b"before")
    transport.deliver_all()
    received: list[bytes] = []
    transport.subscribe(SUBMIT, received.append)
    transport.publish(SUBMIT, b"after")
    transport.deliver_all()
    assert received == [b"after"]


def test_the_body_is_copied_at_publication() -> None:
    transport = InMemoryTransport()
    received: list[bytes] = []
    transport.subscribe(SUBMIT, received.append)
    body = bytearray(b"original")
    transport.publish(SUBMIT, body)  # type: ignore[arg-type]  # a caller may pass a buffer
    body[:] = b"mutated!"
    transport.deliver_all()
    assert received == [b"original"]
    assert type(received[0]) is bytes


@pytest.mark.parametrize("topic", ["", "Announce", "submit ", "results", "announce.h1"])
def test_unknown_topics_are_rejected(topic: str) -> None:
    transport = InMemoryTransport()
    with pytest.raises(TransportError, match="unknown topic"):
        transport.publish(topic, b"x")
    with pytest.raises(TransportError, match="unknown topic"):
        transport.subscribe(topic, lambda body: None)
    assert transport.pending == 0
    assert issubclass(TransportError, HeflError)


# -- senders -------------------------------------------------------------------------------------


def test_a_participant_publishes_with_its_identity_as_the_sender() -> None:
    bus = InMemoryTransport()
    coordinator, hospital = bus.participant("coordinator"), bus.participant("hospital-2")
    received: list[tuple[bytes, str]] = []
    coordinator.subscribe_with_sender(SUBMIT, lambda body, sender: received.append((body, sender)))
    hospital.publish(SUBMIT, b"update")
    bus.publish(SUBMIT, b"injected", sender="hospital-1")  # a test speaking as someone
    assert bus.deliver_all() == 2
    assert received == [(b"update", "hospital-2"), (b"injected", "hospital-1")]
    assert isinstance(hospital, InMemoryParticipant) and bus.dropped == {}


def test_a_message_without_sender_reaches_plain_handlers_and_is_dropped_for_sender_handlers() -> (
    None
):
    bus = InMemoryTransport()
    order: list[str] = []
    bus.subscribe(SUBMIT, _named(order, "plain-1"))
    bus.subscribe_with_sender(SUBMIT, lambda body, sender: order.append(f"sender-{sender}"))
    bus.subscribe(SUBMIT, _named(order, "plain-2"))
    bus.publish(SUBMIT, b"anonymous")
    bus.participant("hospital-1").publish(SUBMIT, b"signed")
    bus.deliver_all()
    assert order == ["plain-1", "plain-2", "plain-1", "sender-hospital-1", "plain-2"]
    assert bus.dropped == {"unauthenticated": 1}


def test_a_participant_shares_the_bus_and_its_checks() -> None:
    bus = InMemoryTransport()
    hospital = bus.participant("hospital-1")
    received: list[bytes] = []
    hospital.subscribe(ANNOUNCE, received.append)
    bus.participant("coordinator").publish(ANNOUNCE, b"round 1")
    assert bus.pending == 1 and bus.deliver_all() == 1
    assert received == [b"round 1"]
    with pytest.raises(TransportError):
        hospital.publish("results", b"x")
    with pytest.raises(TransportError):
        hospital.subscribe_with_sender("results", lambda body, sender: None)

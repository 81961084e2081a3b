"""Broker URL lists (a cluster's nodes) and queue types, without a cluster: the parsing, the walk
over the nodes against the local test broker and dead ports, and an old classic queue refused
with a way out. The cluster itself: test_broker_cluster.py.
"""

from __future__ import annotations

import logging
import re
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.errors import ConfigError, TransportError
from common.transport import ANNOUNCE, SUBMIT
from common.transport.brokerpki import make_ca
from common.transport.names import Names
from common.transport.rabbitmq import Backoff, Probe, RabbitMQTransport
from common.transport.settings import broker_urls, queue_arguments, with_password
from testkit import broker

FAST = Backoff(initial=0.1, maximum=1.0, give_up_after=30.0)


@pytest.fixture(scope="module", autouse=True)
def running_broker() -> None:
    try:
        broker.ensure_running()
    except broker.BrokerError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def vhost() -> Iterator[broker.Vhost]:
    with broker.temporary_vhost() as made:
        yield made


def dead_url(vhost: broker.Vhost) -> str:
    """The guest's URL of ``vhost`` on a port nothing listens on."""
    with socket.socket() as probe:
        probe.bind((broker.HOST, 0))
        port = probe.getsockname()[1]
    return vhost.url.replace(f":{broker.PORT}/", f":{port}/")


# -- parsing -------------------------------------------------------------------------------------


def test_one_url_stays_one_and_a_comma_separated_list_gives_each_node_in_order() -> None:
    assert broker_urls("amqp://u@h:5672/v") == ("amqp://u@h:5672/v",)
    assert broker_urls(" amqps://u@a:5671/v , amqps://u@b:5671/v,amqps://u@c:5671/v ") == (
        "amqps://u@a:5671/v",
        "amqps://u@b:5671/v",
        "amqps://u@c:5671/v",
    )
    assert broker_urls(["amqp://a/v", "amqp://b/v"]) == ("amqp://a/v", "amqp://b/v")
    with pytest.raises(ConfigError, match="one broker node"):  # a probe checks one node
        Probe("amqp://u:p@a/v,amqp://u:p@b/v")


@pytest.mark.parametrize(
    ("urls", "message"),
    [
        ("amqp://u@a/v,,amqp://u@c/v", r"^broker URL 2 of 3 is empty"),
        ("amqp://u@a/v,", r"^broker URL 2 of 2 is empty"),
        ("amqp://u@a/v,rabbitmq-2:5672/v", r"^broker URL 2 of 2 must start with amqp://"),
        ("amqp://u@a/v,http://b/v", r"^broker URL 2 of 2 \(http://b/v\) must start with amqp"),
        (
            "amqp://u@a:56x2/v,amqp://u@b/v",
            r"^broker URL 1 of 2 \(amqp://…@a:56x2/v\) is not a URL",
        ),
        ("amqp://u@a/v,amqp:///v", r"^broker URL 2 of 2 \(amqp:///v\) names no host"),
        ("amqp://u@a/v,amqp://w@b/v", r"^broker URL 2 of 2 \(amqp://…@b/v\) names another user"),
        ("amqp://u@a/v,amqp://u@b/w", r"^broker URL 2 of 2 .* or virtual host than the first"),
        ("amqp://u@a/v,amqp://u@a/v", r"^broker URL 2 of 2 \(amqp://…@a/v\) repeats an earlier"),
        ("ftp://a/v", r"^the broker URL \(ftp://a/v\) must start with amqp://"),
    ],
)
def test_a_malformed_list_is_refused_naming_the_bad_entry(urls: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        broker_urls(urls)
    with pytest.raises(ConfigError, match=message):
        RabbitMQTransport(identity="hospital-1", url=urls)
    with pytest.raises(ConfigError, match=r"^the broker URL is empty"):
        broker_urls("")


def test_a_password_split_by_a_raw_comma_is_never_shown_in_the_error() -> None:
    with pytest.raises(ConfigError) as raised:
        broker_urls("amqp://hospital-1:sec,ret@rabbitmq-1/hefl,amqp://hospital-1@rabbitmq-2/hefl")
    text = str(raised.value)
    assert "broker URL 1 of 3" in text and "%2C" in text
    assert "sec" not in text and "ret" not in text


def test_a_password_file_goes_into_every_url_of_a_list_and_the_ca_file_applies_to_each(
    tmp_path: Path,
) -> None:
    urls = "amqps://rabbitmq-1:5671/hefl,amqps://rabbitmq-2:5671/hefl"
    filled = with_password(urls, "p,w", user="hospital-2")
    assert filled == (
        "amqps://hospital-2:p%2Cw@rabbitmq-1:5671/hefl,amqps://hospital-2:p%2Cw@rabbitmq-2:5671/hefl"
    )
    with pytest.raises(ConfigError, match=r"^broker URL 2 of 2 .*already carries a password"):
        with_password("amqps://h@rabbitmq-1/hefl,amqps://h:old@rabbitmq-2/hefl", "pw")
    transport = RabbitMQTransport(identity="hospital-2", url=filled)
    assert transport.endpoints == (
        "amqps://hospital-2@rabbitmq-1:5671/hefl",
        "amqps://hospital-2@rabbitmq-2:5671/hefl",
    )
    assert "p%2Cw" not in repr(transport) and transport.user == "hospital-2"
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(make_ca().cert)
    with pytest.raises(ConfigError, match=r"^broker URL 2 of 2: a broker CA file needs an amqps"):
        RabbitMQTransport(
            identity="h", url="amqps://u:p@a:5671/v,amqp://u:p@b:5672/v", ca_file=str(ca_file)
        )


def test_queue_types_are_quorum_or_classic() -> None:
    assert queue_arguments("quorum") == {"x-queue-type": "quorum"}
    assert queue_arguments("classic") == {}  # as hefl declared its queues before
    with pytest.raises(ConfigError, match="queue type"):
        queue_arguments("stream")
    with pytest.raises(ConfigError, match="queue type"):
        RabbitMQTransport(identity="h", url="amqp://a/v", queue_type="mirrored")  # type: ignore[arg-type]


# -- the walk over the nodes, on the local broker ------------------------------------------------


def test_a_client_walks_its_list_past_dead_nodes_to_a_live_one(
    vhost: broker.Vhost, caplog: pytest.LogCaptureFixture
) -> None:
    urls = [dead_url(vhost), vhost.url, dead_url(vhost)]
    prefix = f"hefl-test-{uuid.uuid4().hex[:8]}"
    with (
        caplog.at_level(logging.INFO, logger="common.transport.rabbitmq"),
        RabbitMQTransport(identity="coordinator", url=",".join(urls), prefix=prefix) as transport,
    ):
        transport.subscribe(SUBMIT, lambda body: None)
        live = transport.endpoints[1]
        assert transport.connected_to == live
        transport.publish(SUBMIT, b"through the one live node")
    assert broker.queues(vhost)[Names(prefix).submit_queue]["messages_ready"] == 1
    assert f"amqp_connected identity=coordinator endpoint={live} attempt=1" in caplog.text
    assert "amqp_reconnecting" not in caplog.text  # one walk found it: no backoff
    assert transport.connected_to is None  # closed


def test_every_walk_tries_each_node_once_in_list_order_before_it_backs_off(
    vhost: broker.Vhost, caplog: pytest.LogCaptureFixture
) -> None:
    urls = [dead_url(vhost) for _ in range(3)]
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    backoff = Backoff(initial=1.0, maximum=1.0, jitter=0.0, give_up_after=2.5)
    with (
        caplog.at_level(logging.INFO, logger="common.transport.rabbitmq"),
        RabbitMQTransport(
            identity="coordinator", url=urls, backoff=backoff, sleep=sleep, clock=lambda: now[0]
        ) as transport,
        pytest.raises(TransportError, match=r"unreachable for 2\.5 s \(4 attempts\)") as raised,
    ):
        transport.publish(SUBMIT, b"nowhere to go")

    lines = [line for line in caplog.text.splitlines() if "amqp_node_failed" in line]
    tried = [re.search(r"endpoint=(\S+)", line)[1] for line in lines]  # type: ignore[index]
    walks = [tried[i : i + 3] for i in range(0, len(tried), 3)]
    assert len(walks) == 4 and all(len(walk) == 3 for walk in walks)  # at 0, 1, 2 and 2.5 s
    first = transport.endpoints.index(walks[0][0])
    in_order = list(transport.endpoints[first:] + transport.endpoints[:first])
    assert all(walk == in_order for walk in walks)
    assert caplog.text.count("amqp_reconnecting") == 3
    assert transport.endpoint in str(raised.value)


# -- queue types ---------------------------------------------------------------------------------


def test_the_queues_are_quorum_queues_on_a_single_node_too(vhost: broker.Vhost) -> None:
    prefix = f"hefl-test-{uuid.uuid4().hex[:8]}"
    with (
        RabbitMQTransport(identity="coordinator", url=vhost.url, prefix=prefix) as coordinator,
        RabbitMQTransport(identity="hospital-1", url=vhost.url, prefix=prefix) as hospital,
    ):
        coordinator.subscribe(SUBMIT, lambda body: None)
        hospital.subscribe(ANNOUNCE, lambda body: None)
    types = dict(
        line.split("\t")
        for line in broker.ctl("list_queues", "-p", vhost.name, "-s", "name", "type").splitlines()
    )
    assert types == {
        f"{prefix}.submit.coordinator": "quorum",
        f"{prefix}.announce.hospital-1": "quorum",
    }


@pytest.mark.parametrize("identity", ["coordinator", "hospital-1"])
def test_a_classic_queue_from_an_older_hefl_is_refused_with_how_to_replace_it(
    vhost: broker.Vhost, identity: str
) -> None:
    prefix = f"hefl-test-{uuid.uuid4().hex[:8]}"
    names = Names(prefix)
    queue = names.submit_queue if identity == "coordinator" else names.announce_queue(identity)
    topic = SUBMIT if identity == "coordinator" else ANNOUNCE
    options: dict[str, Any] = {"url": vhost.url, "prefix": prefix, "backoff": FAST}
    with RabbitMQTransport(identity="coordinator", queue_type="classic", **options) as old:
        old.subscribe(SUBMIT, lambda body: None)  # the exchanges, and a classic submit queue
    with RabbitMQTransport(identity=identity, queue_type="classic", **options) as old:
        old.subscribe(topic, lambda body: None)  # and the hospital's classic queue

    with (
        RabbitMQTransport(identity=identity, **options) as new,
        pytest.raises(TransportError) as raised,
    ):
        new.subscribe(topic, lambda body: None)

    text = str(raised.value)
    assert f"holds the queue {queue!r} as another queue type than the quorum queue" in text
    assert f"rabbitmqctl delete_queue -p {vhost.name} {queue}" in text
    broker.ctl("delete_queue", "-p", vhost.name, queue)  # what the message says to do
    with RabbitMQTransport(identity=identity, **options) as new:
        new.subscribe(topic, lambda body: None)
    assert broker.queues(vhost)[queue]["durable"]

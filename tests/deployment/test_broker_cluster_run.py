"""Issue 18's must-show: losing one broker node of the three-node cluster mid-round, the run goes
on without waiting for it to return.

Real ``hefl coordinator`` and ``hefl hospital`` processes (``testkit.cluster``), each logged in
as its own broker user and given the URLs of all three nodes of a local RabbitMQ cluster
(``testkit.broker_cluster``), train a tiny model for a few rounds. In round 2 the node the
coordinator is connected to is killed (SIGKILL, every process of the node) and stays dead: the
coordinator moves to another node, the quorum queues elect new leaders among the two left, and
every round still closes with every hospital.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.protocol.runconfig import hospital_names
from testkit.broker import BrokerError
from testkit.broker_cluster import BrokerCluster, broker_cluster
from testkit.cluster import ProcessCluster, sample_csv

HOSPITALS = 3
ROUNDS = 3
CONNECTED = re.compile(r"amqp_connected identity=coordinator endpoint=(\S+)")


@pytest.fixture
def brokers() -> Iterator[BrokerCluster]:
    try:
        with broker_cluster() as made:
            yield made
    except BrokerError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def cluster(tmp_path: Path, brokers: BrokerCluster) -> Iterator[ProcessCluster]:
    source = sample_csv(tmp_path / "sample.csv", patients=1500)
    prefix = f"hefl-test-{uuid.uuid4().hex[:8]}"
    with brokers.site(hospital_names(HOSPITALS), prefix=prefix) as site:
        running = ProcessCluster(
            root=tmp_path / "run", site=site, hospitals=HOSPITALS, rounds=ROUNDS
        )
        try:
            running.prepare(source)
            yield running
        finally:
            running.stop_all()


def test_losing_one_broker_node_mid_round_the_run_continues_without_waiting_for_it(
    cluster: ProcessCluster, brokers: BrokerCluster
) -> None:
    assert len(cluster.broker_url("coordinator").split(",")) == len(brokers.nodes) == 3
    for name in cluster.names:
        cluster.start_hospital(name)
    cluster.start_coordinator()
    cluster.wait_for(
        lambda s: s["round"] == 2 and s["phase"] == "round", timeout=300, what="round 2"
    )
    before = cluster.log("coordinator")
    connected = CONNECTED.findall(before)
    assert connected, cluster.tail_logs()
    dead = brokers.node_at(connected[-1])  # the coordinator's node now
    brokers.kill(dead)

    assert cluster.wait_exit("coordinator", timeout=300) == 0, cluster.tail_logs()
    for name in cluster.names:
        assert cluster.wait_exit(name, timeout=120) == 0, cluster.tail_logs()
    state = cluster.state()
    assert state is not None and state["phase"] == "done"
    assert [r["round"] for r in state["history"]] == list(range(1, ROUNDS + 1))
    assert all(set(r["accepted"]) == set(cluster.names) for r in state["history"])
    assert not dead.running, "the dead node came back: the run must not have waited for it"
    after = cluster.log("coordinator")[len(before) :]
    assert "amqp_connection_lost identity=coordinator" in after
    moved = [brokers.node_at(endpoint) for endpoint in CONNECTED.findall(after)]
    assert moved and all(node is not dead for node in moved)
    submit = brokers.queues(cluster.site.plan.vhost)[cluster.site.plan.names.submit_queue]
    assert submit["type"] == "quorum" and dead.name not in submit["online"]

"""What the running nodes count for their ``/metrics``, in a masked run with a dropout (real
CKKS and Keras over the in-memory transport)."""

from __future__ import annotations

from pathlib import Path

from common.crypto import open_aggregator, open_cipher
from common.observe.prometheus import Exposition
from hospital_node.metrics import HospitalMeter
from hospital_node.service import Hospital
from tests.protocol.test_masked_rounds import GoneAfterReady, keys, masked_cluster

__all__ = ["keys"]  # the module-scoped key ceremony fixture


def test_meters_count_each_round_once_though_a_dropout_costs_a_second_upload(
    keys: Path,
) -> None:
    cluster = masked_cluster(keys)
    meters = {name: HospitalMeter() for name in cluster.plan.hospitals}
    for name in cluster.plan.hospitals:
        cluster.add_hospital(
            name,
            cipher=open_cipher(keys / "hospital"),
            kind=GoneAfterReady if name == "h4" else Hospital,
            observers=(meters[name],),
        )
    coordinator = cluster.start_coordinator(open_aggregator(keys / "coordinator"))
    cluster.transport.deliver_all()
    uploaded_once = coordinator.meter.bytes_received
    cluster.now[0] += 31.0  # h4 never uploads: the others mask afresh
    coordinator.tick()
    cluster.run_to_end()
    assert coordinator.state.phase == "done", coordinator.state.error

    for name in ("h1", "h2", "h3"):
        meter = meters[name]
        assert meter.rounds_done == 2  # round 1 took two uploads, counted once
        assert meter.last_round == 2
        assert min(meter.seconds.values()) > 0
    assert meters["h4"].rounds_done == 0 and meters["h4"].seconds["training"] > 0

    accepted = sum(r.bytes_uploaded for r in coordinator.state.history)
    # Read: round 1's first attempt (3 uploads, discarded), its second, and round 2.
    assert coordinator.meter.bytes_received == uploaded_once + accepted
    assert uploaded_once == coordinator.state.history[0].bytes_uploaded
    assert coordinator.meter.aggregation_seconds > 0
    assert coordinator.meter.bytes_sent > 2 * coordinator.state.history[0].bytes_uploaded / 3

    text = Exposition(meters["h1"].metric_families).render()[0].decode()
    assert "hefl_hospital_rounds_done_total 2.0" in text
    assert "hefl_hospital_round 2.0" in text
    status = coordinator.status()
    assert status["history"][0]["attempts"] == 2 and status["history"][0]["failed"] == 1
    assert status["roster"][3]["last_seen_seconds"] is not None  # h4 said it was ready

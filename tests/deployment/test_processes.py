"""The distributed deployment with real OS processes and a real RabbitMQ server.

BFV is used where results are compared bit for bit: its fixed-point sums decrypt exactly, so a
distributed run must reproduce the embedded simulation's final model to the last float (CKKS adds
fresh noise per encryption, which training amplifies to ~1e-5; see test_simulation.py).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import ClassVar

import numpy as np
import pytest

from common.crypto import (
    AGGREGATE,
    Binding,
    HEConfig,
    open_aggregator,
    open_cipher,
    run_key_ceremony,
)
from common.data import FeatureEncoder, load_local_data, load_schema
from common.model import ModelConfig
from common.protocol import layout
from common.protocol.messages import (
    FinalReport,
    Hello,
    RoundStarted,
    RunFinished,
    UpdateSubmitted,
)
from common.protocol.signing import issue_identities
from common.store import LocalStore, sha256_hex
from common.transport import ANNOUNCE, SUBMIT
from common.transport.rabbitmq import RabbitMQTransport
from hefl.keylayout import KeyLayout
from hefl.simulation import Cohort, SimulationConfig, run_federated
from testkit.cluster import DATA, ProcessCluster, process_cluster, sample_csv

MODEL = ModelConfig(hidden_units=(8,), batch_size=64, local_epochs=1)
ROUNDS = 5


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sample_csv(tmp_path_factory.mktemp("data") / "sample.csv", patients=3000)


@pytest.fixture
def cluster(tmp_path: Path, broker: ModuleType, source: Path) -> Iterator[ProcessCluster]:
    """4 hospitals' keys, shards and broker users, ready to start; every process is killed
    afterwards."""
    with process_cluster(tmp_path, hospitals=4, rounds=ROUNDS) as running:
        running.prepare(source)
        yield running


def embedded_reference(
    cluster: ProcessCluster, out: Path, names: tuple[str, ...] | None = None
) -> np.ndarray:
    """The embedded simulation on the same shards, keys and seed (of ``names``: every site)."""
    keys = KeyLayout(cluster.keys)
    names = names or tuple(cluster.names)
    data = tuple(
        load_local_data(
            cluster.root / "shards" / f"{n}.csv",
            load_schema("diabetes130"),
            n,
            seed=42,
            test_fraction=0.2,
        )
        for n in names
    )
    encoder = FeatureEncoder(load_schema("diabetes130"))
    cohort = Cohort(
        names=names, data=data, n_features=encoder.n_features, layout_digest=encoder.layout_digest
    )
    config = SimulationConfig(dataset=DATA, hospitals=4, rounds=ROUNDS, model=MODEL, out=out)
    result = run_federated(
        config,
        cohort,
        run="embedded",
        cipher_for=lambda _n: open_cipher(keys.he_hospital),
        aggregator=open_aggregator(keys.he_coordinator),
        store_dir=out / "store",
    )
    return result.weights


def wait_until(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(0.1)


def run_everyone(cluster: ProcessCluster, *coordinator_flags: str) -> None:
    """Hospitals first (their hello waits in the durable submit queue), so round 1's deadline
    does not run while they are still importing TensorFlow on a busy machine."""
    for name in cluster.names:
        cluster.start_hospital(name)
    cluster.start_coordinator(*coordinator_flags)


def assert_completed(cluster: ProcessCluster, reference: np.ndarray | None) -> dict:
    assert cluster.wait_exit("coordinator", timeout=300) == 0, cluster.tail_logs()
    for name in cluster.names:
        assert cluster.wait_exit(name, timeout=120) == 0, cluster.tail_logs()
    state = cluster.state()
    assert state is not None and state["phase"] == "done"
    assert [r["round"] for r in state["history"]] == list(range(1, ROUNDS + 1))
    if reference is not None:
        for name in cluster.names:
            np.testing.assert_allclose(cluster.final_weights(name), reference, rtol=0, atol=1e-6)
    return state


def test_four_hospital_processes_reproduce_the_embedded_simulation(
    cluster: ProcessCluster,
    tmp_path: Path,
) -> None:
    run_everyone(cluster)
    state = assert_completed(cluster, embedded_reference(cluster, tmp_path / "embedded"))
    assert all(len(r["accepted"]) == 4 for r in state["history"])
    assert state["rejected"] == {}
    assert "round 5/5 closed" in cluster.log("coordinator")


def test_a_hospital_killed_mid_round_is_left_out_then_rejoins(
    cluster: ProcessCluster,
) -> None:
    others = {"hospital-1", "hospital-2", "hospital-3"}
    run_everyone(cluster, "--min-hospitals", "3", "--round-timeout", "20")
    cluster.wait_for(lambda s: s["round"] >= 2, timeout=120, what="round 2")
    cluster.kill("hospital-4")  # SIGKILL, as the OOM killer would

    # The round it misses: the other three answered and the round waits for hospital-4,
    # which is still on the roster, until the deadline.
    def waiting_for_it(state: dict) -> bool:
        accepted = {a["hospital"] for a in state["accepted"]}
        return state["phase"] == "round" and accepted == others

    # A submission it sent before dying may still be in the queue: be sure the round waits.
    stuck: dict = {}
    while cluster.state() != stuck:
        stuck = cluster.wait_for(waiting_for_it, timeout=60, what="a round without hospital-4")
        time.sleep(2)
    missed = stuck["round"]
    assert missed < ROUNDS, f"the kill landed in the last round ({missed}): nothing to rejoin"
    # Freeze the coordinator so the restarted hospital's hello arrives after that deadline
    # but before the next round can close without it.
    cluster.signal("coordinator", signal.SIGSTOP)
    try:
        cluster.start_hospital("hospital-4")  # its log is appended to
        wait_until(
            lambda: cluster.log("hospital-4").count("hospital_ready") == 2,
            timeout=120,
            what="hospital-4 restarted",
        )
        wait_until(lambda: time.time() > stuck["deadline"] + 0.5, timeout=30, what="deadline")
    finally:
        cluster.signal("coordinator", signal.SIGCONT)
    state = assert_completed(cluster, reference=None)
    accepted = [set(r["accepted"]) for r in state["history"]]
    assert accepted[missed - 1] == others  # closed on quorum (3 of 4) at the deadline
    assert all(a == others | {"hospital-4"} for a in accepted[missed:])  # back right after


def test_a_restarted_coordinator_resumes_and_loses_nothing(
    cluster: ProcessCluster,
    tmp_path: Path,
) -> None:
    run_everyone(cluster)
    before = cluster.wait_for(
        lambda s: s["round"] >= 2 and s["phase"] == "round", timeout=180, what="round 2"
    )
    cluster.kill("coordinator")
    cluster.start_coordinator()
    assert_completed(cluster, embedded_reference(cluster, tmp_path / "embedded"))
    assert "run_resumed" in cluster.log("coordinator")
    assert before["round"] >= 2


def test_everyone_reconnects_after_the_broker_restarts(
    cluster: ProcessCluster,
    tmp_path: Path,
    broker: ModuleType,
) -> None:
    run_everyone(cluster)
    cluster.wait_for(
        lambda s: s["round"] >= 2 and s["phase"] == "round", timeout=180, what="round 2"
    )
    broker.restart()
    assert_completed(cluster, embedded_reference(cluster, tmp_path / "embedded"))


def test_bad_input_on_the_live_broker_is_rejected_and_the_run_is_right(
    cluster: ProcessCluster,
    tmp_path: Path,
) -> None:
    keys = KeyLayout(cluster.keys)
    store = LocalStore(cluster.store)
    cluster.start_coordinator()
    cluster.wait_for(lambda s: s["round"] == 1, timeout=60, what="the coordinator")
    # A ciphertext under another key ceremony's key, honestly signed by hospital-2.
    run_key_ceremony(HEConfig(scheme="bfv"), tmp_path / "other-h", tmp_path / "other-c")
    foreign = open_cipher(tmp_path / "other-h").encrypt(np.zeros(10))
    key2 = layout.update_key(cluster.run, 1, "hospital-2")
    store.put(key2, foreign)
    # A blob whose digest does not match the message that names it.
    key1 = layout.update_key(cluster.run, 1, "hospital-1")
    store.put(key1, b"placeholder")
    h1, h3 = keys.codec("hospital-1"), keys.codec("hospital-3")
    outsider = KeyLayout(tmp_path / "outsider")
    issue_identities(outsider.root / "identities", ["hospital-1"])
    forged = outsider.codec("hospital-1")  # right name, wrong key

    def update(hospital: str, round_: int, ref: str, sha: str) -> UpdateSubmitted:
        return UpdateSubmitted(
            run=cluster.run, round=round_, hospital=hospital, blob_ref=ref, sha256=sha
        )

    bad = [  # each from the broker login of the hospital it claims to be
        ("hospital-1", b"\x00\x01garbage\xff"),  # malformed
        ("hospital-1", b'{"type": "Hello", "v": 1, "run": "run-1", "hospital": "hospital-1"}'),
        ("hospital-1", h1.wrap(b'{"type": "Hello", "v": 1, "run": 7}')),  # signed, wrong schema
        ("hospital-1", forged.encode(update("hospital-1", 1, key1, "0" * 64))),  # bad signature
        ("hospital-1", h1.encode(update("hospital-1", 1, key1, "f" * 64))),  # digest mismatch
        (
            "hospital-2",
            keys.codec("hospital-2").encode(update("hospital-2", 1, key2, sha256_hex(foreign))),
        ),
        ("hospital-3", h1.encode(update("hospital-1", 1, key1, "e" * 64))),  # relayed by another
    ]
    logins = {
        name: RabbitMQTransport(url=cluster.broker_url(name), identity=name, prefix=cluster.prefix)
        for name in ("hospital-1", "hospital-2", "hospital-3")
    }
    try:
        for sender, body in bad:
            logins[sender].publish(SUBMIT, body)
        cluster.wait_for(
            lambda s: sum(s["rejected"].values()) >= len(bad), timeout=60, what="rejections"
        )
        for name in cluster.names:
            cluster.start_hospital(name)
        cluster.wait_for(lambda s: s["round"] >= 3, timeout=180, what="round 3")
        # A replay of hospital-3's round-1 submission (validly signed, for a closed round); its
        # blob was deleted once round 1's aggregate was written.
        ref3 = layout.update_key(cluster.run, 1, "hospital-3")
        assert not store.exists(ref3)
        replay = h3.encode(update("hospital-3", 1, ref3, sha256_hex(b"round 1")))
        logins["hospital-3"].publish(SUBMIT, replay)
        state = assert_completed(cluster, embedded_reference(cluster, tmp_path / "embedded"))
    finally:
        for login in logins.values():
            login.close()
    assert state["rejected"] == {
        "malformed": 2,
        "bad-signature": 2,
        "StoreError": 1,
        "BlobError": 1,
        "late": 1,
        "sender-mismatch": 1,
    }
    log = cluster.log("coordinator")
    for reason in (
        "reason=malformed",
        "reason=bad-signature",
        "reason=StoreError",
        "reason=BlobError",
        "reason=late",
        "reason=sender-mismatch",
    ):
        assert reason in log


class Insider:
    """hospital-4 played by the test: its own broker login, signing key and HE bundle, answering
    every round with a blob whose header lies (a different lie each round)."""

    LIES: ClassVar[dict[int, str]] = {
        1: "blob-summands",
        2: "blob-values",
        3: "blob-binding",
        4: "blob-kind",
        5: "blob-size",
    }

    def __init__(self, cluster: ProcessCluster) -> None:
        keys = KeyLayout(cluster.keys)
        self.cluster = cluster
        self.codec = keys.codec("hospital-4")
        self.cipher = open_cipher(keys.he_hospital)
        self.store = LocalStore(cluster.store)
        self.values = 0
        self.answered: set[int] = set()
        self.done = threading.Event()
        self.bus = RabbitMQTransport(
            url=cluster.broker_url("hospital-4"),
            identity="hospital-4",
            prefix=cluster.prefix,
            senders=("coordinator",),
        )

    def craft(self, round_: int) -> bytes:
        own = Binding(run=self.cluster.run, round=round_, sender="hospital-4")
        payload = np.full(self.values, 0.01)
        spec = self.cipher.spec
        if round_ == 1:
            header, chunks = spec.decode(self.cipher.encrypt(payload, binding=own))
            return spec.encode(
                kind=header.kind, value_count=len(payload), summands=100, chunks=chunks, binding=own
            )
        if round_ == 2:
            return self.cipher.encrypt(np.zeros(1), binding=own)
        if round_ == 3:
            return self.cipher.encrypt(payload, binding=replace(own, sender="hospital-1"))
        if round_ == 4:
            return self.cipher.encrypt(payload, kind=AGGREGATE, binding=own)
        return self.cipher.encrypt(payload, binding=own) + bytes(spec.max_blob_bytes(len(payload)))

    def handle(self, body: bytes) -> None:
        message = self.codec.decode(body)
        run = self.cluster.run
        if isinstance(message, RoundStarted) and message.round not in self.answered:
            self.answered.add(message.round)  # re-announcements (hellos) are not new rounds
            if message.global_ref is not None:  # learn the model size from the aggregate
                self.values = self.cipher.decrypt(self.store.get(message.global_ref)).shape[0]
            elif not self.values:
                self.values = 10  # round 1: any size will do for the lies of round 1
            blob = self.craft(message.round)
            key = layout.update_key(run, message.round, "hospital-4")
            self.store.put(key, blob)
            submitted = UpdateSubmitted(
                run=run,
                round=message.round,
                hospital="hospital-4",
                blob_ref=key,
                sha256=sha256_hex(blob),
            )
            self.bus.publish(SUBMIT, self.codec.encode(submitted))
        elif isinstance(message, RunFinished):
            report = FinalReport(run=run, hospital="hospital-4", metrics={})
            self.bus.publish(SUBMIT, self.codec.encode(report))
            self.done.set()

    def serve(self) -> None:
        self.bus.subscribe(ANNOUNCE, self.handle)
        self.bus.publish(
            SUBMIT, self.codec.encode(Hello(run=self.cluster.run, hospital="hospital-4"))
        )
        self.bus.serve(stop=self.done.is_set)


def test_an_insider_on_the_live_broker_is_refused_and_the_others_model_is_unchanged(
    cluster: ProcessCluster,
    tmp_path: Path,
) -> None:
    honest = ("hospital-1", "hospital-2", "hospital-3")
    for name in honest:
        cluster.start_hospital(name)
    cluster.start_coordinator("--min-hospitals", "3")
    insider = Insider(cluster)
    thread = threading.Thread(target=insider.serve, daemon=True)
    thread.start()
    try:
        assert cluster.wait_exit("coordinator", timeout=300) == 0, cluster.tail_logs()
        thread.join(timeout=60)
    finally:
        insider.done.set()
        insider.bus.close()
    for name in honest:
        assert cluster.wait_exit(name, timeout=120) == 0, cluster.tail_logs()
    state = cluster.state()
    assert state is not None and state["phase"] == "done"
    assert state["rejected"] == {reason: 1 for reason in Insider.LIES.values()}
    assert [set(r["accepted"]) for r in state["history"]] == [set(honest)] * ROUNDS
    assert [r["failed"] for r in state["history"]] == [["hospital-4"]] * ROUNDS
    log = cluster.log("coordinator")
    for reason in Insider.LIES.values():
        assert f"reason={reason}" in log
    reference = embedded_reference(cluster, tmp_path / "embedded", names=honest)
    for name in honest:
        np.testing.assert_allclose(cluster.final_weights(name), reference, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_twenty_hospital_processes_complete_three_rounds(
    tmp_path: Path,
    broker: ModuleType,
) -> None:
    source = sample_csv(tmp_path / "sample.csv", patients=6000, seed=9)
    with process_cluster(tmp_path, hospitals=20, rounds=3) as cluster:
        cluster.prepare(source)
        run_everyone(cluster)
        assert cluster.wait_exit("coordinator", timeout=600) == 0, cluster.tail_logs()
        state = cluster.state()
        assert state is not None and state["phase"] == "done"
        assert [len(r["accepted"]) for r in state["history"]] == [20, 20, 20]
